"""A review writer process for the durability tests: records verdicts one transaction at a time.

After each commit it prints "<write index> <session id> <position>" and flushes, so the test knows exactly
which writes were committed before it kills the process.

    python tests/_review_writer.py URL --session ID --forever      # cycle over the session's items until killed
    python tests/_review_writer.py URL --new-session NAME --items N  # create a session, review each item once
"""
from __future__ import annotations

import argparse
import itertools
import sys

from covid_models.imaging.io import content_hash
from covid_models.reviews.identity import Reviewer
from covid_models.reviews.records import NewItem
from covid_models.reviews.store import ReviewStore


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--session", type=int)
    target.add_argument("--new-session", metavar="REVIEWER")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--forever", action="store_true")
    args = parser.parse_args(argv)

    with ReviewStore(args.url) as store:
        if args.new_session:
            items = [
                NewItem(content_hash(f"{args.new_session}/{i}".encode()), f"{i}.png", "covid", 0.75, 0.5)
                for i in range(args.items)
            ]
            owner = Reviewer(f"name:{args.new_session.casefold()}", args.new_session)
            session_id = store.start_session(owner, "writer-model", "xray", items)
        else:
            session_id = args.session
        n_items = len(store.items(session_id))
        writes = itertools.count() if args.forever else range(n_items)
        for index in writes:
            position = index % n_items
            store.record_verdict(session_id, position, ("agree", "unsure")[index % 2], note=f"write {index}")
            print(index, session_id, position, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
