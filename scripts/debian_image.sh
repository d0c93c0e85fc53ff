# Sourced by scripts/container_check.sh and scripts/fresh_clone_check.sh: the container tools
# (apt-get) and local Debian images made with debootstrap, so that neither needs a Docker engine
# or a container registry, only Debian's packages and PyPI.
#
# The caller sets CACHE_DIR, MIRROR and STORAGE (an array of podman/buildah storage options),
# defines step() and fail(), and calls remove_rootfs on exit.

rootfs=""

# Removes what an interrupted debootstrap left (with /proc and /sys still mounted in the tree).
remove_rootfs() {
    if [[ -n $rootfs && -d $rootfs ]]; then
        findmnt -rn -o TARGET | grep "^$rootfs/" | sort -r | xargs -r umount -l || true
        rm -rf --one-file-system "$rootfs"
    fi
}

# Installs debootstrap, buildah, podman, runc and iproute2 (apt-get) where one is missing.
install_container_tools() {
    local packages=(debootstrap debian-archive-keyring buildah podman runc iproute2 python3)
    local missing=() package
    for package in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$package")
    done
    if ((${#missing[@]})); then
        step "apt-get install ${missing[*]}"
        timeout 300 apt-get update -q < /dev/null > /dev/null
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -q --no-install-recommends \
            "${missing[@]}" uidmap slirp4netns containernetworking-plugins < /dev/null > /dev/null
    fi
}

# debian_image SUITE PACKAGES IMAGE: makes IMAGE (debootstrap minbase of SUITE with the
# comma-separated PACKAGES) unless podman's store or the tarball cache under CACHE_DIR has it.
#
# A host behind a TLS-inspecting proxy trusts the proxy's CA through
# /usr/local/share/ca-certificates; pip inside the image needs the same trust, so the image gets
# those certificates (none on an ordinary machine). They are part of the cache key, the recipe.
debian_image() {
    local suite=$1 packages=$2 image=$3
    local name=${image##*/}
    name=${name%%:*}-$suite
    local host_cas=("${HOST_CA_DIR:-/usr/local/share/ca-certificates}"/*.crt)
    [[ -e ${host_cas[0]} ]] || host_cas=()
    local recipe
    recipe=$({
        echo "recipe 1 $suite $packages"
        if ((${#host_cas[@]})); then cat "${host_cas[@]}"; fi
    } | sha256sum | cut -c1-16)
    local tarball=$CACHE_DIR/$name-$recipe.tar
    if [[ $(podman "${STORAGE[@]}" image inspect \
        --format '{{index .Config.Labels "loss-service.base-recipe"}}' "$image" 2>/dev/null) \
        == "$recipe" ]]; then
        step "image $image ($recipe) is in the store"
        return
    fi
    mkdir -p "$CACHE_DIR"
    if [[ ! -s $tarball ]]; then
        rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
        step "debootstrap $suite --variant=minbase --include=$packages (from $MIRROR)"
        timeout 900 debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" \
            "$MIRROR" > "$CACHE_DIR/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; fail "debootstrap"; }
        if ((${#host_cas[@]})); then
            cp "${host_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
            chroot "$rootfs" update-ca-certificates > /dev/null 2>&1
        fi
        chroot "$rootfs" apt-get clean
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
            "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
        chroot "$rootfs" python3 -c 'import ensurepip, sys, venv; assert sys.version_info >= (3, 11)'
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
        rootfs=""
        find "$CACHE_DIR" -maxdepth 1 -name "$name-*.tar" ! -name "${tarball##*/}" -delete
    fi
    step "import $tarball as $image"
    timeout 300 podman "${STORAGE[@]}" import --quiet \
        --change "LABEL loss-service.base-recipe=$recipe" --change 'CMD ["/bin/bash"]' \
        "$tarball" "$image" > /dev/null
}

# podman's default limits (nofile 1048576) can exceed what this host lets a process raise its
# own to, and runc then fails to start the container ("error setting rlimits"): ask for the
# host's hard limits instead, capped, as `--ulimit` options in the array ULIMITS.
host_ulimits() {
    local nofile nproc
    nofile=$(ulimit -Hn); [[ $nofile == unlimited || $nofile -gt 65536 ]] && nofile=65536
    nproc=$(ulimit -Hu); [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
    ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
}
