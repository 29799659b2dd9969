#!/usr/bin/env bash
# Fails when a tracked file talks about how or when the project was built
# (numbered work periods, plans, pilots, issue numbers): the repository
# describes the library as it is; `git log` keeps its history. Technical uses
# of the same words (a database session, a consumer group's session timeout)
# do not match.
set -euo pipefail
cd "$(dirname "$0")/../.."

ordinal='first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|previous|earlier|latest'
pattern="\\b(${ordinal}) (session|work period|iteration of (this|the) (project|work))\\b"
pattern+="|\\bsessions? [0-9]+\\b|\\bwork periods?\\b"
pattern+="|\\boriginal(ly)? plan(ned)?\\b|\\bpilot\\b"
pattern+="|\\b(issue|ticket) #?[0-9]+\\b"

# This file holds the pattern itself.
if git grep -nIiE "$pattern" -- . ':!scripts/lib/history_words.sh'; then
    echo "error: the lines above describe how the project was built; state what the code or document does now (history belongs in git)" >&2
    exit 1
fi
