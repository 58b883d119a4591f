"""Placeholder: sub-commands are added by the owner of this concern."""


def register(subparsers) -> None:
    pass
