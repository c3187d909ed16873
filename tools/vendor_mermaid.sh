#!/usr/bin/env bash
# Refresh the mermaid copy that the docs site serves itself.
#
# Why vendored: Material for MkDocs fetches mermaid from a CDN at page-load
# time unless a `mermaid` is already loaded, so a reader offline (or behind a
# proxy) saw raw diagram source. The site now ships
# docs/assets/javascripts/mermaid.min.js (about 3.5 MB, MIT licence, pinned
# below). We commit it rather than fetch it during `make`: a fresh machine
# then builds a working site with only python3 (no npm), builds are
# reproducible, and a refresh is one reviewed commit. Material's bundle asks
# for mermaid@11, so stay on 11.x.
#
#   tools/vendor_mermaid.sh            # re-fetch VERSION and check its hash
#   tools/vendor_mermaid.sh 11.18.0    # move to another 11.x (prints the new hash)
#
# Needs npm (Debian: apt-get install npm); nothing else in the project does.
set -euo pipefail

VERSION="${1:-11.17.2}"
SHA256="581ed7d74bd9048d0e3a91363927d72ef22942d7722546b27f7cc29e35390eb8"

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/docs/assets/javascripts"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent "mermaid@$VERSION" >/dev/null && tar xzf mermaid-*.tgz)
got="$(sha256sum "$tmp/package/dist/mermaid.min.js" | cut -d' ' -f1)"
if [[ $# -eq 0 && "$got" != "$SHA256" ]]; then
    echo "mermaid@$VERSION: sha256 $got, expected $SHA256" >&2
    exit 1
fi
cp "$tmp/package/dist/mermaid.min.js" "$dest/mermaid.min.js"
{
    echo "mermaid $VERSION, dist/mermaid.min.js from the npm package (npm pack mermaid@$VERSION)"
    echo "sha256 $got"
    echo "Refreshed by tools/vendor_mermaid.sh; served by the docs site so diagrams render offline."
    echo
    cat "$tmp/package/LICENSE"
} >"$dest/mermaid.LICENSE.txt"
echo "docs/assets/javascripts/mermaid.min.js: mermaid $VERSION, sha256 $got"
[[ $# -eq 0 ]] || echo "now set VERSION and SHA256 in $0 to $VERSION and $got"
