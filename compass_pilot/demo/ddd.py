"""Stand-in for DDD filtering: decode a raw chunk and keep only the event dump.

python -m compass_pilot.demo.ddd --raw cdr11001-275678.raw --evtdump evtdump2-11001-275678.raw
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compass_pilot.demo.rawdata import HEADER_PREFIX


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--evtdump", required=True)
    args = parser.parse_args(argv)
    raw = Path(args.raw)
    with open(raw, encoding="ascii", errors="replace") as handle:
        header = handle.readline().split()
        if not header or header[0] != HEADER_PREFIX:
            print("DaqEventsManager::GetEvent(): no event", flush=True)
            return 2
        fields = dict(item.split("=", 1) for item in header[1:])
        kept = 0
        with open(args.evtdump, "w", encoding="ascii") as dump:
            dump.write(f"#EVTDUMP run={fields.get('run')} chunk={fields.get('chunk')}\n")
            for line in handle:
                parts = line.split()
                if len(parts) > 2 and parts[0] == "E" and int(parts[1]) % 10 == 0:
                    dump.write(line)
                    kept += 1
    print(f"{kept} events written to the event dump")
    print("End of the decoding!", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
