"""lth_keras: lottery tickets found on natural images, transferred to non-natural ones."""

__version__ = "0.2.0"
