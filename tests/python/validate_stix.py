"""Validates STIX 2.1 files with the OASIS stix2-validator in strict mode (every
"SHOULD" of the specification is an error). Prints each result; exits 1 if any file
is invalid.

Usage: validate_stix.py [--disable CODES] FILE...

--disable takes the validator's comma-separated check codes to leave out (for content
that fails them as published by its author, not as exported by the node).
"""

import sys

from stix2validator import ValidationOptions, print_results, validate_file


def main(args):
    disabled = ""
    if args[:1] == ["--disable"]:
        disabled, args = args[1], args[2:]
    options = ValidationOptions(version="2.1", strict=True, disabled=disabled)
    results = [validate_file(path, options) for path in args]
    print_results(results)
    return 0 if all(result.is_valid for result in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
