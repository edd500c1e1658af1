from conftest import ostree


def test_release_then_ostree_sees_it(treeship, sample_tree, repo, manifest_file, gpg_key, ed25519_key):
    out = treeship("release", sample_tree, "--repo", repo, "--branch", "demo/x86_64", "--version", "1.0",
                   "--provenance", manifest_file, "--gpg-sign", gpg_key.fingerprint,
                   "--gpg-homedir", gpg_key.homedir, "--sign-ed25519", ed25519_key.secret, "--json").json()
    assert ostree("rev-parse", "--repo", repo, "demo/x86_64").stdout.strip() == out["commit"]
    shown = ostree("show", "--repo", repo, "--gpg-homedir", gpg_key.homedir, "demo/x86_64").stdout
    assert "Good signature" in shown
    assert "no errors found" in ostree("fsck", "--repo", repo).stdout
