"""Invalid: two stages that read each other."""

from altoflow import stage


@stage
def ping(pong: int) -> int:
    return pong + 1


@stage
def pong(ping: int) -> int:
    return ping - 1
