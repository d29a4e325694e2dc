"""Share links, patient access codes and upload links."""
