"""seckill: a flash-sale admission server.

    python seckill_server.py --port 5000            serve (see --help for every flag)
    python seckill_server.py create ITEM --stock N  create a sale (also: update, status,
                                                    list, orders, cancel, confirm, delete)

The entry point only: the server is the `seckill` package (README: Layout).
"""

import sys

from seckill.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
