#!/usr/bin/env bash
# Builds a compilerd sandbox for one language from Debian packages only (no image registry): the
# packages' files are unpacked (apt-get download + dpkg-deb -x, no maintainer scripts) into a small
# root with busybox as the shell, plus two commands compilerd runs:
#   /usr/lib/compilerd/run  program on stdin -> compiled in /tmp where the language needs it, run;
#                           a compile error is the compiler's message on stderr, status 2
#   /usr/lib/compilerd/fmt  program on stdin -> formatted program on stdout (only where there is a
#                           formatter), errors on stderr, nonzero status
# and /etc/compilerd-language (language=, version=, and output= when the run's output is framed),
# which the Docker image repeats as labels (compilerd.version, compilerd.output).
# Run requests (Piston's API) run in stages instead: the files are written to /tmp, an optional
# compile stage leaves its output there, and the run stage runs it; /etc/compilerd-language and
# the labels record how (main=, compile=, keep=, run=; see README, "Piston API").
#
# Usage: build-image.sh LANGUAGE [--tag IMAGE] [--rootfs DIR]
#   LANGUAGE: go, python, c or sh. Without --tag or --rootfs, both are built: the Docker image
#   compilerd-LANGUAGE and the rootfs /var/lib/compilerd/rootfs/LANGUAGE (for --backend bwrap).
#   With only one of them, only that one.
# Idempotent: downloaded packages are kept in $COMPILERD_DEB_CACHE (default
# /var/cache/compilerd/debs); a rootfs or image that already holds the same packages built by the
# same script is left as it is.
set -euo pipefail

usage() { echo "usage: $0 go|python|c|sh [--tag IMAGE] [--rootfs DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
lang=$1; shift
tag=; rootfs=
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=${2:?--tag needs an image name}; shift 2 ;;
    --rootfs) rootfs=${2:?--rootfs needs a directory}; shift 2 ;;
    *) usage ;;
  esac
done
if [ -z "$tag" ] && [ -z "$rootfs" ]; then
  tag=compilerd-$lang
  rootfs=/var/lib/compilerd/rootfs/$lang
fi

# Packages whose files the sandbox needs; their Depends are added. `main` names the toolchain's
# package, whose upstream version is the one /languages reports.
output=
case $lang in
  go) packages=(golang-1.19-go golang-1.19-src tzdata); main=golang-1.19-go; name=go; output=go-playground ;;
  python) packages=(python3); main=python3.11-minimal; name=python ;;
  c) packages=(gcc libc6-dev); main=gcc-12; name=gcc ;;
  sh) packages=(); main=busybox-static; name=busybox ;;
  *) echo "unknown language $lang: choose go, python, c or sh" >&2; exit 2 ;;
esac
packages+=(busybox-static)
# Go modules a program may import without network: Debian's golang-*-dev packages, made into a
# read-only module cache (go_build). The operator's choice; GET /languages lists them.
go_module_packages=()
if [ "$lang" = go ]; then
  read -r -a go_module_packages <<<"${COMPILERD_GO_MODULES-golang-github-google-go-cmp-dev golang-golang-x-text-dev golang-golang-x-exp-dev}"
  packages+=("${go_module_packages[@]}")
fi
# The stages of a run request: the main file's name, the compile command (none: no compile
# stage), what the compile leaves for the run, and the run command (arguments follow it).
stage_main=; stage_compile=; stage_keep=; stage_run=
case $lang in
  go) stage_main=prog.go; stage_compile=/usr/lib/compilerd/compile; stage_keep=prog; stage_run=./prog ;;
  python) stage_main=main.py; stage_run="/usr/bin/python3 -B main.py" ;;
  c) stage_main=main.c; stage_compile="/usr/bin/gcc -O2 -o prog main.c -lm"; stage_keep=prog
     stage_run=./prog ;;
  sh) stage_main=main.sh; stage_run="/bin/sh main.sh" ;;
esac
# Dependencies a sandbox never uses (package management, perl for mailcap, docs tooling).
skip='^(dpkg|install-info|tar|perl|perl-base|perl-modules-.*|libperl.*|mailcap|mime-support|debconf|libgdbm-compat4)$'

cache=${COMPILERD_DEB_CACHE:-/var/cache/compilerd/debs}
mkdir -p "$cache"
mapfile -t closure < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
  --no-breaks --no-replaces --no-enhances "${packages[@]}" | grep '^[a-z0-9]' | sort -u | grep -Ev "$skip")
# 'URI' FILE SIZE HASH, one per package; only missing files are fetched.
mapfile -t uris < <(apt-get download --print-uris "${closure[@]}" 2>/dev/null)
[ ${#uris[@]} -eq ${#closure[@]} ] || {
  echo "apt cannot find every package of ${closure[*]}; run apt-get update" >&2; exit 1; }
debs=(); fetch=()
for line in "${uris[@]}"; do
  read -r _ file _ <<<"$line"
  debs+=("$cache/$file")
  [ -s "$cache/$file" ] || fetch+=("${file%%_*}")
done
if [ ${#fetch[@]} -gt 0 ]; then
  (cd "$cache" && apt-get download -q "${fetch[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
fi
for d in "${debs[@]}"; do [ -s "$d" ] || { echo "download of $d failed" >&2; exit 1; }; done

main_deb=$(printf '%s\n' "${debs[@]}" | grep "/${main}_")
version=$(dpkg-deb -f "$main_deb" Version | sed -e 's/^[0-9]*://' -e 's/-[^-]*$//' -e 's/+.*//')
version="$name $version"
go_src=$(cd "$(dirname "$0")/../images/go" && pwd)
stamp=$( (cat "$0"; printf '%s\n' "${debs[@]##*/}"
  [ "$lang" != go ] || cat "$go_src"/*/*) | sha256sum | cut -c1-16)

build_root() {
  local root=$1
  mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,home,usr/lib/compilerd}
  chmod 1777 "$root/tmp"
  for d in "${debs[@]}"; do dpkg-deb -x "$d" "$root"; done
  rm -rf "$root"/usr/share/{doc,man,info,locale,lintian}
  trim "$root"
  # busybox is the shell and the small tools, wherever a package did not bring its own.
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || [ -e "$root/usr/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n' >"$root/etc/passwd"
  # localhost without DNS (there is no network): a server and its client in one program meet on
  # loopback. Docker mounts its own /etc/hosts, which names localhost too.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  printf 'include /etc/ld.so.conf.d/*.conf\n' >"$root/etc/ld.so.conf"
  [ -d "$root/lib/x86_64-linux-gnu" ] && ldconfig -r "$root" 2>/dev/null || true
  printf 'language=%s\nversion=%s\nstamp=%s\n' "$lang" "$version" "$stamp" >"$root/etc/compilerd-language"
  [ -z "$output" ] || printf 'output=%s\n' "$output" >>"$root/etc/compilerd-language"
  printf 'main=%s\ncompile=%s\nkeep=%s\nrun=%s\n' "$stage_main" "$stage_compile" "$stage_keep" \
    "$stage_run" >>"$root/etc/compilerd-language"
  write_commands "$root/usr/lib/compilerd"
  case $lang in
    go) go_build "$root" ;;
  esac
  write_stage_commands "$root/usr/lib/compilerd"
}

# Go programs are built with the faketime tag, as on the Go playground: time starts at
# 2009-11-10 23:00:00 UTC, sleeps cost nothing, and every write to stdout or stderr is framed with
# the fake time it was made at. The standard library is compiled for it here, once, inside the
# root itself (so that its paths are the sandbox's), without cgo as nothing links C; Debian's own
# precompiled std, built without the tag, is dropped. The run command is our runner
# (images/go/runner, built here with Debian's Go, without the tag): it reads the program as the
# Go playground does (txtar, test mode, its error texts), writes one record saying how the build
# went, then runs the program (output=go-playground: the daemon reads the record and decodes the
# frames). A single-file program is compiled and linked directly against these packages
# (importcfg); anything else goes through the go command, which finds them through -pkgdir.
GO_FAKETIME_PKG=/usr/lib/compilerd/go-faketime
# The modules, unpacked as the go command keeps them, read-only: a build reads them in place (no
# copy in the run's small /tmp), and its cache/download is the proxy the build asks.
GO_MODCACHE=/usr/lib/compilerd/gomodcache
go_build() {
  local root=$1 goroot=/usr/lib/go-1.19
  command -v bwrap >/dev/null || { echo "bwrap is needed to build the Go standard library" >&2; exit 1; }
  go_module_roots >"$root/tmp/go-module-roots"
  bwrap --bind "$root" / --proc /proc --dev /dev --tmpfs /tmp --ro-bind "$go_src" /tmp/src \
    --ro-bind "$root/tmp/go-module-roots" /tmp/roots \
    --unshare-all --die-with-parent --clearenv --setenv PATH /usr/bin:/bin --setenv HOME /tmp \
    --setenv GOCACHE /tmp/gocache --setenv CGO_ENABLED 0 --setenv GOROOT $goroot \
    --setenv GOFLAGS -mod=mod --chdir /tmp/src /bin/sh -ec "
      $goroot/bin/go install -tags faketime -pkgdir $GO_FAKETIME_PKG std
      cd /tmp/src/runner && $goroot/bin/go build -trimpath -ldflags='-s -w' -o /usr/lib/compilerd/run .
      cd /tmp/src/modproxy && $goroot/bin/go build -o /tmp/modproxy .
      /tmp/modproxy /tmp/goproxy </tmp/roots >/usr/lib/compilerd/go-modules
      cd /tmp && for m in \$(cat /usr/lib/compilerd/go-modules); do
        GOMODCACHE=$GO_MODCACHE GOPROXY=file:///tmp/goproxy GOSUMDB=off $goroot/bin/go mod download \$m
      done
      [ ! -d $GO_MODCACHE ] || chmod -R a-w $GO_MODCACHE"
  rm -f "$root/tmp/go-module-roots"
  rm -rf "$root$goroot/pkg/linux_amd64" "$root/usr/share/gocode"
  local modules
  modules=$(paste -sd, "$root/usr/lib/compilerd/go-modules")
  [ -z "$modules" ] || printf 'modules=%s\n' "$modules" >>"$root/etc/compilerd-language"
  # Where each package is, for the compiler and linker: what `go build` works out on every run
  # (module loading, the build cache, its own checks) is fixed here.
  (cd "$root$GO_FAKETIME_PKG" && find . -name '*.a' | sed 's|^\./||; s|\.a$||' | sort |
    while read -r p; do printf 'packagefile %s=%s/%s.a\n' "$p" "$GO_FAKETIME_PKG" "$p"; done) \
    >"$root/usr/lib/compilerd/importcfg"
}

# "ROOT VERSION" for each module of the chosen golang-*-dev packages: ROOT, in the sandbox, is a
# directory with a go.mod; VERSION, the module version of the package's upstream version
# (0.7.0 -> v0.7.0; a snapshot 0.0~git20221028.83b7d23 -> the pseudo-version
# v0.0.0-20221028000000-83b7d2300000, its hash padded to the 12 digits the format wants).
go_module_roots() {
  local p deb v date hash
  for p in "${go_module_packages[@]}"; do
    deb=$(printf '%s\n' "${debs[@]}" | grep "/${p}_")
    v=$(dpkg-deb -f "$deb" Version | sed -e 's/^[0-9]*://' -e 's/-[^-]*$//' -e 's/+.*//')
    case $v in
      *~git*.*)
        date=${v#*~git}; hash=${date#*.}; date=${date%%.*}
        hash=$(printf '%s000000000000' "$hash" | cut -c1-12)
        v="v0.0.0-${date}000000-$hash" ;;
      *) v="v$v" ;;
    esac
    dpkg-deb -c "$deb" | awk '{print $6}' | sed -n 's|^\./\(usr/share/gocode/src/.*\)/go\.mod$|/\1|p' |
      while read -r dir; do echo "$dir $v"; done
  done
}

# What a sandbox never uses of the toolchain: tests, test data, and tools no build runs.
trim() {
  local root=$1
  case $lang in
    go)
      local goroot=$root/usr/lib/go-1.19
      rm -rf "$goroot/pkg/linux_amd64/cmd" "$root"/usr/share/go-1.19/{test,api,misc}
      find "$root/usr/share/go-1.19/src" -depth \( -name testdata -type d -exec rm -rf {} + \) -o -name '*_test.go' -delete
      for tool in api pprof trace doc fix objdump addr2line nm test2json cover dist; do
        rm -f "$goroot/pkg/tool/linux_amd64/$tool"
      done
      ;;
    python)
      rm -rf "$root"/usr/lib/python3.11/{test,idlelib,tkinter,turtledemo,ensurepip,lib2to3/tests}
      ;;
    c)
      rm -f "$root"/usr/lib/x86_64-linux-gnu/lib{asan,tsan,lsan,ubsan,gprofng}.so* \
        "$root"/usr/lib/gcc/x86_64-linux-gnu/12/{lto1,lto-wrapper}
      ;;
  esac
}

# The run and format commands. Compiled programs are built and run in /tmp, the only writable place.
write_commands() {
  local dir=$1
  case $lang in
    go)
      # run: the runner, built by go_build.
      cat >"$dir/fmt" <<'EOF'
#!/bin/sh
# Messages name the program prog.go, as the Go playground's do.
/usr/lib/go-1.19/bin/gofmt 2>/tmp/gofmt.err
status=$?
sed 's/^<standard input>/prog.go/' /tmp/gofmt.err >&2
exit $status
EOF
      ;;
    python)
      cat >"$dir/run" <<'EOF'
#!/bin/sh
cat >/tmp/prog.py
exec /usr/bin/python3 -B /tmp/prog.py
EOF
      ;;
    c)
      cat >"$dir/run" <<'EOF'
#!/bin/sh
cd /tmp || exit 2
cat >prog.c
/usr/bin/gcc -O2 -o prog prog.c -lm || exit 2
exec ./prog
EOF
      ;;
    sh)
      cat >"$dir/run" <<'EOF'
#!/bin/sh
exec /bin/sh -s
EOF
      ;;
  esac
  [ ! -e "$dir/run" ] || chmod 755 "$dir"/run
  [ ! -e "$dir/fmt" ] || chmod 755 "$dir/fmt"
}

# What a run request's compile stage runs where a compiler line is not enough (Go: the compiler and
# linker on the precompiled standard library, as `run` does, for every .go file in /tmp).
write_stage_commands() {
  local dir=$1
  case $lang in
    go)
      cat >"$dir/compile" <<'EOF'
#!/bin/sh
export GOROOT=/usr/lib/go-1.19
tool=/usr/lib/go-1.19/pkg/tool/linux_amd64
cfg=/usr/lib/compilerd/importcfg
cd /tmp || exit 2
GOGC=400 GOMEMLIMIT=64MiB GOMAXPROCS=2 $tool/compile -o prog.a -p main -complete -nolocalimports -pack -importcfg $cfg ./*.go >&2 || exit 2
GOGC=400 GOMEMLIMIT=64MiB GOMAXPROCS=2 $tool/link -o prog -s -w -buildmode=exe -importcfg $cfg prog.a >&2 || exit 2
rm -f prog.a
EOF
      chmod 755 "$dir/compile"
      ;;
  esac
}

if [ -n "$rootfs" ]; then
  if [ "$(sed -n 's/^stamp=//p' "$rootfs/etc/compilerd-language" 2>/dev/null)" = "$stamp" ]; then
    echo "rootfs $rootfs is up to date ($version)"
  else
    mkdir -p "$(dirname "$rootfs")"
    rm -rf "$rootfs.new"
    build_root "$rootfs.new"
    rm -rf "$rootfs" && mv "$rootfs.new" "$rootfs"
    echo "rootfs $rootfs built ($version, $(du -sh "$rootfs" | cut -f1))"
  fi
fi

if [ -n "$tag" ]; then
  docker info >/dev/null 2>&1 || { echo "no Docker engine: cannot build image $tag" >&2; exit 1; }
  if [ "$(docker image inspect -f '{{index .Config.Labels "compilerd.stamp"}}' "$tag" 2>/dev/null)" = "$stamp" ]; then
    echo "image $tag is up to date ($version)"
  else
    src=$rootfs
    if [ -z "$src" ]; then
      src=$(mktemp -d)
      trap 'rm -rf "$src"' EXIT
      build_root "$src"
    fi
    modules=$(sed -n 's/^modules=//p' "$src/etc/compilerd-language")
    tar -C "$src" -c . | docker import \
      --change 'CMD ["/usr/lib/compilerd/run"]' \
      --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
      --change "LABEL compilerd.language=$lang" \
      --change "LABEL compilerd.version=\"$version\"" \
      --change "LABEL compilerd.stamp=$stamp" \
      ${output:+--change "LABEL compilerd.output=$output"} \
      ${modules:+--change "LABEL compilerd.modules=$modules"} \
      --change "LABEL compilerd.main=\"$stage_main\" compilerd.compile=\"$stage_compile\"" \
      --change "LABEL compilerd.keep=\"$stage_keep\" compilerd.run=\"$stage_run\"" \
      - "$tag" >/dev/null
    echo "image $tag built ($version)"
  fi
fi
