#!/bin/sh
# Build the training / validation corpus from the King James Version of the
# Bible (public domain), as shipped by the Debian packages `bible-kjv` (the
# `bible` program) and `bible-kjv-text` (its data file /usr/lib/bible.data).
#
#   apt-get install -y bible-kjv bible-kjv-text
#   sh tools/train/get_text.sh OUTDIR
#
# Output (plain ASCII text):
#   OUTDIR/train.txt   training text
#   OUTDIR/valid.txt   held-out text, never trained on
#
# Format: one verse per line, verse text only. Book names, chapter headings
# and verse numbers are NOT included. Chapters are separated by one empty
# line. Chapters are numbered 1..1189 in canonical order (Genesis 1 = 1,
# Revelation 22 = 1189); every 50th chapter (50, 100, ..., 1150: 23 chapters)
# goes to valid.txt, all others to train.txt.
set -eu
OUT=${1:?usage: get_text.sh OUTDIR}
mkdir -p "$OUT"
# -l0: no line wrapping, one verse per line; -m: enough buffer for the whole text.
bible -l0 -m 8192 "Gen1:1-Rev22:21" | awk -v train="$OUT/train.txt" -v valid="$OUT/valid.txt" '
    # chapter heading, e.g. "Genesis 1" or "1 Kings 3" (no leading spaces)
    /^[^ ]/ { ch++; f = (ch % 50 == 0) ? valid : train; if (n[f]++) print "" > f; next }
    # verse line: "  N text"
    /^ +[0-9]+ / { sub(/^ +[0-9]+ /, ""); print > f; next }
    /^$/ { next }
    { print "unexpected line: " $0 > "/dev/stderr"; exit 1 }
    END { if (ch != 1189) { print "expected 1189 chapters, got " ch > "/dev/stderr"; exit 1 } }
'
wc -lc "$OUT/train.txt" "$OUT/valid.txt"
