#!/usr/bin/env bash
# softhsm-token.sh DIR LABEL
#
# Makes a throwaway SoftHSM2 configuration (DIR/softhsm2.conf) and token
# directory (DIR/tokens), and initialises a token labelled LABEL in it.
#
# PINs come from the environment, never from the command line:
#   SOFTHSM_USER_PIN  user PIN (default 1234, development only)
#   SOFTHSM_SO_PIN    SO PIN   (default 12345678, development only)
# SOFTHSM2_MODULE overrides where libsofthsm2.so is looked for.
#
# On success it prints, on stdout, lines to eval:
#   export SOFTHSM2_CONF=DIR/softhsm2.conf
#   export SOFTHSM2_MODULE=/path/to/libsofthsm2.so
# If DIR already holds a token labelled LABEL it says so and exits 0.
#
# How PINs stay off argv: softhsm2-util reads PINs only from a terminal or
# from --pin/--so-pin, so the token is initialised with OpenSC's pkcs11-tool,
# given "--so-pin env:SOFTHSM_SO_PIN --new-pin env:SOFTHSM_USER_PIN": it reads
# the PINs from those environment variables. pkcs11-tool --init-token picks
# the first slot holding a token, so the token is made in an empty staging
# token directory (where the only slot is SoftHSM's free one) and its
# directory is then moved into DIR/tokens. (There, with one token, --token-label
# is safe; elsewhere beware that pkcs11-tool matches token label prefixes.)
set -euo pipefail
umask 077

prog=${0##*/}
install_hint="install SoftHSM2 and OpenSC with: apt-get install -y softhsm2 opensc"

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

usage() {
	cat >&2 <<EOF
usage: $prog DIR LABEL
  Makes DIR/softhsm2.conf and DIR/tokens and initialises a SoftHSM2 token
  labelled LABEL (1 to 32 bytes). PINs are read from the environment:
  SOFTHSM_USER_PIN (default 1234) and SOFTHSM_SO_PIN (default 12345678);
  the defaults are for development only.
EOF
	exit 2
}

[[ $# -eq 2 ]] || usage
case $1 in -h | --help) usage ;; esac
dir=$1
label=$2

# Label: what a PKCS#11 token label can hold, and what we can find again.
LC_ALL=C
[[ -n $label ]] || die "empty token label"
((${#label} <= 32)) || die "token label is longer than 32 bytes"
[[ $label != [[:space:]]* && $label != *[[:space:]] ]] || die "token label has leading or trailing blanks"
[[ $label != *[[:cntrl:]]* ]] || die "token label has a control character"

command -v softhsm2-util >/dev/null 2>&1 || die "softhsm2-util not found; $install_hint"
command -v pkcs11-tool >/dev/null 2>&1 || die "pkcs11-tool not found; $install_hint"

if [[ -n ${SOFTHSM2_MODULE:-} ]]; then
	[[ -f $SOFTHSM2_MODULE ]] || die "SOFTHSM2_MODULE=$SOFTHSM2_MODULE: no such file; unset it or $install_hint"
	module=$SOFTHSM2_MODULE
else
	module=
	for m in /usr/lib/softhsm/libsofthsm2.so \
		/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
		/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so \
		/usr/local/lib/softhsm/libsofthsm2.so; do
		if [[ -f $m ]]; then
			module=$m
			break
		fi
	done
	[[ -n $module ]] || die "SoftHSM2 module libsofthsm2.so not found (or set SOFTHSM2_MODULE); $install_hint"
fi

if [[ -z ${SOFTHSM_USER_PIN+set} ]]; then
	echo "$prog: warning: SOFTHSM_USER_PIN is not set; using the default user PIN, for development only" >&2
	user_pin=1234
else
	user_pin=$SOFTHSM_USER_PIN
fi
if [[ -z ${SOFTHSM_SO_PIN+set} ]]; then
	echo "$prog: warning: SOFTHSM_SO_PIN is not set; using the default SO PIN, for development only" >&2
	so_pin=12345678
else
	so_pin=$SOFTHSM_SO_PIN
fi
((${#user_pin} >= 4 && ${#user_pin} <= 255)) || die "SOFTHSM_USER_PIN must be 4 to 255 characters"
((${#so_pin} >= 4 && ${#so_pin} <= 255)) || die "SOFTHSM_SO_PIN must be 4 to 255 characters"

mkdir -p -- "$dir"
dir=$(cd -- "$dir" && pwd -P)
tokens=$dir/tokens
conf=$dir/softhsm2.conf

# make_private_dir D: D exists, is ours, and has mode 0700.
make_private_dir() {
	if [[ -e $1 ]]; then
		[[ -d $1 ]] || die "$1 exists and is not a directory"
		[[ -O $1 ]] || die "$1 is not owned by $(id -un)"
		chmod 700 -- "$1"
	else
		mkdir -m 700 -- "$1"
	fi
}

# write_conf FILE TOKENDIR
write_conf() {
	cat >"$1.tmp" <<EOF
# Written by softhsm-token.sh: a throwaway SoftHSM2 configuration.
directories.tokendir = $2
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
	mv -f -- "$1.tmp" "$1"
}

# token_serial CONF: prints the serial of the initialised token labelled
# $label, or nothing.
token_serial() {
	SOFTHSM2_CONF=$1 softhsm2-util --show-slots |
		LABEL=$label awk '
			/^Slot / { lab = ""; ser = ""; init = 0; next }
			/^[ \t]*Serial number:/ { ser = $0; sub(/^[^:]*:[ ]*/, "", ser); sub(/[ ]+$/, "", ser) }
			/^[ \t]*Initialized:/ { init = ($2 == "yes") }
			/^[ \t]*Label:/ {
				lab = $0; sub(/^[^:]*:[ ]*/, "", lab); sub(/[ ]+$/, "", lab)
				if (init && lab == ENVIRON["LABEL"]) { print ser; exit }
			}'
}

print_exports() {
	printf 'export SOFTHSM2_CONF=%q\n' "$conf"
	printf 'export SOFTHSM2_MODULE=%q\n' "$module"
}

make_private_dir "$tokens"
write_conf "$conf" "$tokens"

serial=$(token_serial "$conf") || die "softhsm2-util --show-slots failed for $conf"
if [[ -n $serial ]]; then
	echo "$prog: token \"$label\" already exists in $dir (serial $serial); leaving it as it is" >&2
	print_exports
	exit 0
fi

staging=$(mktemp -d "$dir/.staging-XXXXXX")
trap 'rm -rf -- "$staging"' EXIT
mkdir -m 700 -- "$staging/tokens"
write_conf "$staging/softhsm2.conf" "$staging/tokens"

# p11 ARGS...: pkcs11-tool on the staging token directory, with the PINs in
# its environment only; its output goes to stderr if it fails.
p11() {
	local out
	if ! out=$(SOFTHSM2_CONF=$staging/softhsm2.conf SOFTHSM_USER_PIN=$user_pin SOFTHSM_SO_PIN=$so_pin \
		pkcs11-tool --module "$module" "$@" </dev/null 2>&1); then
		printf '%s\n' "$out" >&2
		return 1
	fi
}

p11 --init-token "--label=$label" --so-pin env:SOFTHSM_SO_PIN ||
	die "pkcs11-tool --init-token failed for token \"$label\""
p11 "--token-label=$label" --init-pin --login --login-type so \
	--so-pin env:SOFTHSM_SO_PIN --new-pin env:SOFTHSM_USER_PIN ||
	die "pkcs11-tool --init-pin failed for token \"$label\""

moved=0
for t in "$staging"/tokens/*/; do
	[[ -d $t ]] || continue
	mv -- "${t%/}" "$tokens/"
	moved=$((moved + 1))
done
((moved == 1)) || die "expected 1 token directory in staging, found $moved"

serial=$(token_serial "$conf") || die "softhsm2-util --show-slots failed for $conf"
[[ -n $serial ]] || die "token \"$label\" not visible in $dir after initialisation"
echo "$prog: initialised token \"$label\" (serial $serial) in $dir" >&2
print_exports
