"""`python -m apnt.benchcases [--quick] [--family F,...]`, and peak_rss's child process (`--rss CASE PROVIDER MODE`)."""
import sys

from apnt.benchcases.console import _main

sys.exit(_main(sys.argv[1:]))
