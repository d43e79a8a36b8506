#!/usr/bin/env bash
# Builds (or updates) a signed apt repository and a signed rpm repository from
# the packages in DIST_DIR, ready to be served by any static web server.
#
#   scripts/build-repo.sh DIST_DIR OUT_DIR
#
# OUT_DIR/apt/   dists/stable/{Release,InRelease,Release.gpg}
#                dists/stable/main/binary-{amd64,arm64}/Packages{,.gz,.xz}
#                pool/main/<p>/<package>/<package>_<version>_<arch>.deb
# OUT_DIR/rpm/   repodata/ (createrepo_c) with repodata/repomd.xml.asc,
#                packages/*.rpm signed with rpmsign
# OUT_DIR/istio-vm-archive-keyring.gpg   the public key (binary, for Signed-By:)
# OUT_DIR/istio-vm-archive-keyring.asc   the same key, armored (rpm, cloud-init)
# OUT_DIR/.cache/                        apt-ftparchive's cache; not published
#
# Every .deb and .rpm in DIST_DIR is published (istio-vm's, and Istio's
# istio-sidecar once you have checked its download: Istio does not sign it).
# A rebuild is incremental: packages already in the pool are kept as they are
# (old versions stay installable and pinnable), new ones are added, and only
# the indices and their signatures are written again. A package whose file
# name is already in the pool with other contents is refused: a published
# file never changes under the clients' feet.
#
# Signing key: the secret key named by ISTIO_VM_SIGNING_KEY (an id, a
# fingerprint or a user id), else the first secret key of the GnuPG home
# (GNUPGHOME, default ~/.gnupg). It must sign without a passphrase prompt
# (an agent with the passphrase cached, or a key without one).
#
# Environment (optional):
#   ISTIO_VM_SIGNING_KEY   the key to sign with
#   REPO_SUITE             apt suite (default: stable)
#   REPO_ORIGIN            Origin/Label of the apt Release (default: istio-vm)
#
# Needs: apt-ftparchive (apt-utils), gpg, gzip, xz, dpkg-deb, rpm (rpmsign),
# createrepo_c (createrepo-c).
set -euo pipefail

die() {
    echo "build-repo: $*" >&2
    exit 1
}

[ $# -eq 2 ] || {
    echo "usage: $0 DIST_DIR OUT_DIR" >&2
    exit 2
}
dist=$1
out=$2
[ -d "$dist" ] || die "$dist is not a directory (the packages to publish)"
suite=${REPO_SUITE:-stable}
origin=${REPO_ORIGIN:-istio-vm}
component=main
archs=(amd64 arm64)

for tool in apt-ftparchive gpg gzip xz dpkg-deb rpm rpmsign createrepo_c; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing (apt-get install -y apt-utils gnupg xz-utils dpkg rpm createrepo-c)"
done

# The signing key's fingerprint: gpg resolves ISTIO_VM_SIGNING_KEY, or we take
# the first secret key.
keys=$(gpg --batch --with-colons --list-secret-keys ${ISTIO_VM_SIGNING_KEY:+"$ISTIO_VM_SIGNING_KEY"} 2>/dev/null) ||
    die "no secret key ${ISTIO_VM_SIGNING_KEY:+named \"$ISTIO_VM_SIGNING_KEY\" }in ${GNUPGHOME:-~/.gnupg} (gpg --list-secret-keys)"
fpr=$(awk -F: '$1 == "sec" { want = 1; next } want && $1 == "fpr" { print $10; exit }' <<<"$keys")
[ -n "$fpr" ] || die "no secret key in ${GNUPGHOME:-~/.gnupg} to sign with (set GNUPGHOME or ISTIO_VM_SIGNING_KEY)"
echo "build-repo: signing with $fpr" >&2

mkdir -p "$out/apt" "$out/rpm/packages" "$out/.cache"
out=$(cd "$out" && pwd)
gpg_sign=(gpg --batch --yes --no-tty --local-user "$fpr" --digest-algo SHA512)

# Writes stdin to FILE through a temporary file in the same directory, so a
# client never reads a half-written index.
publish() {
    local file=$1
    cat >"$file.tmp"
    mv -f "$file.tmp" "$file"
}

# The public key beside the repositories (for Signed-By:, rpm --import,
# cloud-init's apt sources).
gpg --batch --export "$fpr" | publish "$out/istio-vm-archive-keyring.gpg"
gpg --batch --armor --export "$fpr" | publish "$out/istio-vm-archive-keyring.asc"
[ -s "$out/istio-vm-archive-keyring.gpg" ] || die "gpg exported no public key for $fpr"

# Copies SRC to DEST unless DEST is there already; refuses a different file
# under a published name.
add_to_pool() {
    local src=$1 dest=$2
    if [ -e "$dest" ]; then
        cmp -s "$src" "$dest" ||
            die "$dest is published already with other contents than $src; give the new build a new version"
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    cp "$src" "$dest.tmp"
    mv "$dest.tmp" "$dest"
    echo "build-repo: added $dest" >&2
}

# ---- apt ----------------------------------------------------------------
apt=$out/apt
debs=0
while IFS= read -r -d '' deb; do
    name=$(dpkg-deb --field "$deb" Package)
    version=$(dpkg-deb --field "$deb" Version)
    arch=$(dpkg-deb --field "$deb" Architecture)
    if [ -z "$name" ] || [ -z "$version" ] || [ -z "$arch" ]; then
        die "$deb: no Package, Version or Architecture"
    fi
    case " ${archs[*]} all " in
        *" $arch "*) ;;
        *) die "$deb: architecture $arch is not published (${archs[*]} all)" ;;
    esac
    # Debian's pool layout and file name (an epoch's colon is left out).
    prefix=${name:0:1}
    [[ $name == lib?* ]] && prefix=${name:0:4}
    add_to_pool "$deb" "$apt/pool/$component/$prefix/$name/${name}_${version#*:}_$arch.deb"
    debs=$((debs + 1))
done < <(find "$dist" -maxdepth 1 -name '*.deb' -type f -print0)
echo "build-repo: $debs .deb in $dist" >&2

mkdir -p "$apt/pool/$component"
dists=dists/$suite
for arch in "${archs[@]}"; do
    dir=$apt/$dists/$component/binary-$arch
    mkdir -p "$dir"
    # --arch keeps ARCH and all; the database spares reading unchanged debs.
    (cd "$apt" && apt-ftparchive --db "$out/.cache/packages-$arch.db" --arch "$arch" \
        packages "pool/$component") | publish "$dir/Packages"
    gzip -9nc "$dir/Packages" | publish "$dir/Packages.gz"
    xz -9c "$dir/Packages" | publish "$dir/Packages.xz"
done

# Release lists every index with its size and digests; InRelease and
# Release.gpg sign it. On a rebuild apt-ftparchive also lists the previous
# Release files of this directory: they go (a file cannot list itself). Written last, so a client that fetches Release after
# this sees indices that are all there.
(cd "$apt/$dists" && apt-ftparchive \
    -o "APT::FTPArchive::Release::Origin=$origin" \
    -o "APT::FTPArchive::Release::Label=$origin" \
    -o "APT::FTPArchive::Release::Suite=$suite" \
    -o "APT::FTPArchive::Release::Codename=$suite" \
    -o "APT::FTPArchive::Release::Architectures=${archs[*]}" \
    -o "APT::FTPArchive::Release::Components=$component" \
    -o "APT::FTPArchive::Release::Description=istio-vm packages" \
    -o APT::FTPArchive::Release::MD5=false -o APT::FTPArchive::Release::SHA1=false \
    release .) | grep -Ev ' (In)?Release(\.gpg)?$' >"$apt/$dists/Release.new"
"${gpg_sign[@]}" --clearsign --output "$apt/$dists/InRelease.new" "$apt/$dists/Release.new"
"${gpg_sign[@]}" --armor --detach-sign --output "$apt/$dists/Release.gpg.new" "$apt/$dists/Release.new"
mv -f "$apt/$dists/Release.new" "$apt/$dists/Release"
mv -f "$apt/$dists/Release.gpg.new" "$apt/$dists/Release.gpg"
mv -f "$apt/$dists/InRelease.new" "$apt/$dists/InRelease"

# ---- rpm ----------------------------------------------------------------
rpmdir=$out/rpm
rpms=0
while IFS= read -r -d '' rpm_file; do
    dest=$rpmdir/packages/$(basename "$rpm_file")
    # The published copy is signed, so it differs from DIST_DIR's: compare
    # the header digest, which signing leaves as it is.
    want=$(rpm -qp --nosignature --qf '%{SHA256HEADER}' "$rpm_file")
    if [ -e "$dest" ]; then
        have=$(rpm -qp --nosignature --qf '%{SHA256HEADER}' "$dest")
        [ "$have" = "$want" ] ||
            die "$dest is published already with other contents than $rpm_file; give the new build a new version or release"
    else
        cp "$rpm_file" "$dest.tmp.rpm"
        # Debian's rpm defaults to /usr/bin/gpg2, which Debian does not ship.
        rpmsign --define "__gpg /usr/bin/gpg" --define "_gpg_name $fpr" \
            --define "_gpg_digest_algo sha512" --addsign "$dest.tmp.rpm" >&2
        mv "$dest.tmp.rpm" "$dest"
        echo "build-repo: added $dest (signed)" >&2
    fi
    rpms=$((rpms + 1))
done < <(find "$dist" -maxdepth 1 -name '*.rpm' -type f -print0)
echo "build-repo: $rpms .rpm in $dist" >&2

# --update reuses the metadata of packages it has seen; createrepo_c writes
# repodata/ anew and swaps it in when done.
createrepo_c --quiet --update --unique-md-filenames "$rpmdir" >&2
"${gpg_sign[@]}" --armor --detach-sign --output "$rpmdir/repodata/repomd.xml.asc.new" \
    "$rpmdir/repodata/repomd.xml"
mv -f "$rpmdir/repodata/repomd.xml.asc.new" "$rpmdir/repodata/repomd.xml.asc"

echo "build-repo: apt repository in $apt, rpm repository in $rpmdir" >&2
