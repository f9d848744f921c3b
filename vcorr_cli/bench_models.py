"""``vcorr bench knn`` and ``vcorr bench models`` (issue 3; to be implemented)."""
import click


@click.command()
def knn() -> None:
    """Benchmark the CP module's chunked k-NN against the naive distance matrix."""
    raise click.ClickException("not implemented yet")


@click.command()
def models() -> None:
    """Benchmark forward+backward time and memory of registered models."""
    raise click.ClickException("not implemented yet")
