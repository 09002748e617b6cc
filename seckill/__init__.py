"""seckill: a flash-sale admission server (HTTP/1.1 on uvloop, exact stock in Redis).

Floors, each importing only the ones below it: cli -> process -> app -> admission ->
ops -> sales -> store; http (the parser, the connection, answers) stands apart and
imports nothing of the others. `python seckill_server.py` runs `seckill.cli.main`.
"""

__version__ = "0.1.0"
