#!/usr/bin/env bash
# Build docs/proof/proof_details.tex into proof_details.pdf at the repository's top level.
# Auxiliary files (aux, log, out) stay in a temporary directory that is removed afterwards.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

if ! command -v pdflatex >/dev/null 2>&1; then
    echo "pdflatex not found. Install it with:" >&2
    echo "  apt-get install texlive-latex-base texlive-latex-recommended" >&2
    echo "(amsmath, amsthm, geometry, url, hyperref come with texlive-latex-base;" >&2
    echo " mathtools, microtype, booktabs with texlive-latex-recommended)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# two passes resolve cross-references
for pass in 1 2; do
    if ! pdflatex -interaction=nonstopmode -halt-on-error -output-directory "$tmp" \
            "$here/proof_details.tex" >"$tmp/pass$pass.out" 2>&1; then
        echo "pdflatex failed (pass $pass); last lines of the log:" >&2
        tail -n 40 "$tmp/pass$pass.out" >&2
        exit 1
    fi
done

grep -E "Overfull|Underfull|undefined" "$tmp/proof_details.log" || true
cp "$tmp/proof_details.pdf" "$root/proof_details.pdf"
echo "wrote $root/proof_details.pdf"
