"""The `lightning-mtl` command (`lightning_mtl.cli.main:main`); nothing imports it."""
