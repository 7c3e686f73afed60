#!/bin/bash
# Build hygiene (issue 14: a `make` before the packages were in compiled common/blas.c against
# another package's cblas.h, and after they were installed make kept the stale object): make
# checks its libraries first and says what to run, an implicit declaration is an error, and an
# object is rebuilt when the flags it was built with change (and only then). Works in a temp
# BUILD dir, one small object, so the tree's own build is left alone.
set -uo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export MAKEFLAGS=   # not the jobserver of a `make test` around us
B=$tmp/b
obj=$B/common/err.o
fail=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fail=1; }

# every library the Makefile's PKGS names (PCRE2 and utf8proc came with the byte-level
# tokenizers), then OpenMPI's header package
want="missing libraries ($(sed -n 's/^PKGS *:= *//p' Makefile) ompi-c not found by pkg-config): run tools/deps.sh (or make test)"
out=$(PKG_CONFIG_LIBDIR=$tmp/none make -s BUILD=$B "$obj" 2>&1); rc=$?
if [ $rc != 0 ] && echo "$out" | grep -qF "$want" &&
   [ ! -e "$obj" ]; then ok "no libraries: refused before compiling: $out"; else bad "no libraries: rc=$rc: $out"; fi

make -s BUILD=$B "$obj" > /dev/null 2>&1 || bad "building $obj"
make -q BUILD=$B "$obj" && ok "same flags: up to date" || bad "same flags: rebuilt"
make -q BUILD=$B OPT=-O2 "$obj"; [ $? = 1 ] && ok "other CFLAGS (OPT=-O2): out of date" || bad "OPT=-O2 did not rebuild"
make -s BUILD=$B OPT=-O2 "$obj" > /dev/null 2>&1 && make -q BUILD=$B OPT=-O2 "$obj" && ok "rebuilt with -O2: up to date" ||
    bad "rebuild with -O2"
grep -q -- "-O2" "$B/flags" && ok "BUILD/flags records the flags" || bad "BUILD/flags: $(cat "$B/flags")"
make -q BUILD=$B "$obj"; [ $? = 1 ] && ok "back to the default flags: out of date again" || bad "flag change back not seen"

echo 'int main(void) { return undeclared_function(); }' > "$tmp/implicit.c"
cmd=$(make -n BUILD=$B "$obj" 2>/dev/null | grep -- " -c -o $obj")   # out of date: the compile line
if echo "$cmd" | grep -q -- "-Werror=implicit-function-declaration" &&
   ! cc -Werror=implicit-function-declaration -c -o "$tmp/implicit.o" "$tmp/implicit.c" 2>/dev/null; then
    ok "objects compile with -Werror=implicit-function-declaration, which stops an undeclared call"
else
    bad "compile line lacks -Werror=implicit-function-declaration: $cmd"
fi
exit $fail
