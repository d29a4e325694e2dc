from django.apps import AppConfig


class StudiesConfig(AppConfig):
    name = "studies"
    verbose_name = "Studies and archive"

    def ready(self) -> None:
        # Registers the outbound tasks in every process, so services can queue them by name and eager
        # runs (tests, CELERY_TASK_ALWAYS_EAGER) find them.
        from studies.outbound import tasks  # noqa: F401
