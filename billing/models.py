"""Plans, subscriptions and Stripe events (issue 7)."""
