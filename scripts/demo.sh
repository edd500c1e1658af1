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

# --- BuildStream: the main case. examples/bst-project, built with Debian's bst, released
# with --bst (treeship runs the checkout and records the provenance), then its git source
# moves by one commit and it is built and released again. bst's caches stay in demo/bst.
BST_BRANCH=demo-os-bst/x86_64
BSTDIR=$DEMO/bst
UPSTREAM=$BSTDIR/upstream/hello
bst_env() { XDG_CACHE_HOME="$PWD/$BSTDIR/cache" XDG_CONFIG_HOME="$PWD/$BSTDIR/config" "$@"; }
bstc() { bst_env bst --no-colors --directory "$BSTDIR/project" "$@"; }
upstream_git() {
    GIT_AUTHOR_NAME=Demo GIT_AUTHOR_EMAIL=demo@example.org GIT_COMMITTER_NAME=Demo \
        GIT_COMMITTER_EMAIL=demo@example.org git -C "$UPSTREAM" "$@"
}
release_bst() {
    set +e
    bst_env treeship release --bst demo-os.bst --bst-project "$BSTDIR/project" --branch "$BST_BRANCH" \
        --version "$(date -u +%Y.%m.%d.%H%M%S)" \
        --gpg-sign "$GPG_KEY" --gpg-homedir "$DEMO/gnupg" --sign-ed25519 "$DEMO/release.secret"
    rc=$?
    set -e
    if [ "$rc" = 9 ]; then
        echo "(nothing changed since the last demo run: nothing new released, as intended)"
    elif [ "$rc" != 0 ]; then
        exit "$rc"
    fi
}
if [ ! -d "$UPSTREAM/.git" ]; then
    step "a git repository for the example's git source: $UPSTREAM (tagged v1.0)"
    mkdir -p "$UPSTREAM/usr/share/hello"
    git init -q -b main "$UPSTREAM"
    echo "Hello from Demo OS" > "$UPSTREAM/usr/share/hello/greeting.txt"
    upstream_git add -A
    upstream_git commit -q -m "hello 1.0"
    upstream_git tag -a -m "hello 1.0" v1.0
fi
if [ ! -f "$BSTDIR/project/project.conf" ]; then
    step "examples/bst-project → $BSTDIR/project, alias upstream → file://$PWD/$BSTDIR/upstream/"
    cp -r examples/bst-project "$BSTDIR/project"
    sed -i "s|^  upstream: .*|  upstream: file://$PWD/$BSTDIR/upstream/|" "$BSTDIR/project/project.conf"
fi
if ! grep -q '^  ref:' "$BSTDIR/project/elements/hello.bst"; then
    step "bst track hello.bst   (writes the git ref, in git describe form)"
    bstc track hello.bst >/dev/null 2>&1 || bstc track hello.bst
fi
step "bst build demo-os.bst   (Debian's bst $(bst --version))"
bstc build demo-os.bst 2>&1 | sed -n '/^Pipeline Summary/,$p'
step "treeship release --bst demo-os.bst --branch $BST_BRANCH   (treeship runs bst checkout)"
release_bst
step "treeship show $BST_BRANCH --provenance   (every element: cache key, real URL, commit)"
treeship show "$BST_BRANCH" --provenance
if [ "$(upstream_git rev-list --count HEAD)" = 1 ]; then
    step "the git source moves by one commit: commit upstream, bst track hello.bst, bst build demo-os.bst"
    echo "Hello again, from the second commit" > "$UPSTREAM/usr/share/hello/greeting.txt"
    upstream_git commit -q -am "hello: a new greeting"
    bstc track hello.bst >/dev/null 2>&1 || bstc track hello.bst
    grep '^  ref:' "$BSTDIR/project/elements/hello.bst"
    bstc build demo-os.bst 2>&1 | sed -n '/^Pipeline Summary/,$p'
fi
step "treeship release --bst demo-os.bst --branch $BST_BRANCH   (again)"
release_bst
step "treeship diff $BST_BRANCH^ $BST_BRANCH   (release notes: the commit that moved, what was rebuilt, the files)"
treeship diff "$BST_BRANCH^" "$BST_BRANCH"
treeship verify "$BST_BRANCH" --gpg-homedir "$DEMO/gnupg" --ed25519-pubkey "$DEMO/release.pub" | tail -2
echo
echo "Done. ./$REPO is the local releases repository; ./world is the published one (archive"
echo "mode: serve it over HTTP as it is). To a server: treeship push ssh://user@host/srv/releases $BRANCH"
