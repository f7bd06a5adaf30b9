#!/usr/bin/env bash
# Print the Debian mirror this host's apt already uses: the first "deb" source for the host's
# own release, from /etc/apt/sources.list.d/*.sources (deb822) or the one-line *.list files.
# Exits 1 on hosts that are not Debian or have no such source. Nothing is hard-coded, so a
# build uses whatever mirror (or local proxy) the machine is configured with.
set -euo pipefail

[[ -r /etc/os-release ]] || exit 1
id=$(. /etc/os-release && echo "${ID:-}")
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ $id == debian && -n $codename ]] || exit 1

{
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        awk -v want="$codename" '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uris != "" && enabled != "no") {
                    split(uris, u, " "); print u[1]
                }
                types = suites = uris = enabled = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]*#/ { next }
            tolower($1) == "types:"   { $1 = ""; types = $0 }
            tolower($1) == "suites:"  { $1 = ""; suites = $0 }
            tolower($1) == "uris:"    { $1 = ""; uris = $0 }
            tolower($1) == "enabled:" { enabled = tolower($2) }
            END { flush() }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        sed -E 's/\[[^]]*\]//' "$f" | awk -v want="$codename" '$1 == "deb" && $3 == want { print $2 }'
    done
} | sed 's|/*$||' | awk 'NF { print; found = 1; exit } END { exit !found }'
