#!/bin/bash
# The main job on an embedded default: release a sample tree with its provenance into
# ./releases, signed with a throwaway GPG key and a throwaway ed25519 key, then show it.
# Then pushes it to ./world, a local-path remote that runs the same receiver as SSH does.
# Idempotent: keys and tree are made once under ./demo; a rerun with nothing changed is
# refused by treeship (exit 9) and the demo goes on with the existing release.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=demo
REPO=${TREESHIP_REPO:-releases}
BRANCH=demo-os/x86_64
export TREESHIP_REPO=$REPO
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

mkdir -p "$DEMO"
if [ ! -f "$DEMO/gnupg/pubring.gpg" ]; then
    step "throwaway GPG key in $DEMO/gnupg"
    rm -rf "$DEMO/gnupg"; mkdir -m 700 "$DEMO/gnupg"
    touch "$DEMO/gnupg/pubring.gpg"   # a keyring file, so `ostree --gpg-homedir` reads it too
    gpg --homedir "$DEMO/gnupg" --batch --passphrase '' --quick-gen-key \
        'treeship demo <demo@example.org>' ed25519 sign never 2>/dev/null
fi
GPG_KEY=$(gpg --homedir "$DEMO/gnupg" --batch --with-colons --list-keys | awk -F: '/^fpr/ {print $10; exit}')
if [ ! -f "$DEMO/release.secret" ]; then
    step "throwaway ed25519 key"
    treeship keygen "$DEMO/release"
fi
if [ ! -d "$DEMO/sysroot" ]; then
    step "a sample tree in $DEMO/sysroot"
    mkdir -p "$DEMO/sysroot/usr/bin" "$DEMO/sysroot/usr/lib" "$DEMO/sysroot/etc"
    printf '#!/bin/sh\necho "hello from treeship"\n' > "$DEMO/sysroot/usr/bin/hello"
    chmod 755 "$DEMO/sysroot/usr/bin/hello"
    head -c 300000 /dev/urandom > "$DEMO/sysroot/usr/lib/libdemo.so.1"
    ln -sf libdemo.so.1 "$DEMO/sysroot/usr/lib/libdemo.so"
    printf 'NAME="Demo OS"\nVERSION_ID=1\n' > "$DEMO/sysroot/etc/os-release"
fi

step "treeship release $DEMO/sysroot --branch $BRANCH"
set +e
treeship release "$DEMO/sysroot" --branch "$BRANCH" --version "$(date -u +%Y.%m.%d.%H%M%S)" \
    --provenance examples/provenance.yaml --manifest-path usr/share/treeship/provenance.json \
    --gpg-sign "$GPG_KEY" --gpg-homedir "$DEMO/gnupg" --sign-ed25519 "$DEMO/release.secret"
rc=$?
set -e
if [ "$rc" = 9 ]; then
    echo "(the tree did not change since the last demo run: nothing new released, as intended)"
elif [ "$rc" != 0 ]; then
    exit "$rc"
fi

step "treeship log $BRANCH"
treeship log "$BRANCH"
step "treeship show $BRANCH --provenance --format yaml"
treeship show "$BRANCH" --provenance --format yaml
step "treeship verify $BRANCH"
treeship verify "$BRANCH" --gpg-homedir "$DEMO/gnupg" --ed25519-pubkey "$DEMO/release.pub"
step "the ostree CLI agrees: ostree show --gpg-homedir, ostree fsck"
ostree show --repo="$REPO" "$BRANCH" --gpg-homedir="$DEMO/gnupg" | grep -E '^commit|Good signature|Version'
ostree fsck --repo="$REPO" | tail -1
step "treeship push ./world $BRANCH   (a local-path remote: the same code path as ssh://)"
treeship push ./world "$BRANCH"
step "treeship log $BRANCH --repo world   (commit ids and signatures arrived unchanged)"
treeship log "$BRANCH" --repo world
treeship verify "$BRANCH" --repo world --gpg-homedir "$DEMO/gnupg" --ed25519-pubkey "$DEMO/release.pub" | tail -2
ostree fsck --repo=world | tail -1
echo
echo "Done. ./$REPO is the local releases repository; ./world is the published one (archive"
echo "mode: serve it over HTTP as it is). To a server: treeship push ssh://user@host/srv/releases $BRANCH"
