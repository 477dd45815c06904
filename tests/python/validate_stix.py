"""Validates STIX 2.1 files with the OASIS stix2-validator in strict mode (every
"SHOULD" of the specification is an error). Prints each result; exits 1 if any file
is invalid.

Usage: validate_stix.py FILE...
"""

import sys

from stix2validator import ValidationOptions, print_results, validate_file


def main(paths):
    options = ValidationOptions(version="2.1", strict=True)
    results = [validate_file(path, options) for path in paths]
    print_results(results)
    return 0 if all(result.is_valid for result in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
