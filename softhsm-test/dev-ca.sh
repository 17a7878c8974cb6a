#!/usr/bin/env bash
# dev-ca.sh: a development certificate authority, with openssl as the CA.
#
#   dev-ca.sh init DIR
#   dev-ca.sh sign DIR CSR-FILE USAGE [DAYS]
#   dev-ca.sh sign-expired DIR CSR-FILE USAGE
#   dev-ca.sh sign-future DIR CSR-FILE USAGE
#   dev-ca.sh ocsp-setup DIR URL
#   dev-ca.sh ocsp-answer DIR [MINUTES] < REQUEST.der > RESPONSE.der
#   dev-ca.sh revoke DIR CERT-FILE [REASON]
#
# FOR DEVELOPMENT AND TESTS ONLY. The CA private keys are UNENCRYPTED files
# (DIR/root.key, DIR/intermediate.key, mode 0600 in a 0700 DIR): anyone who
# can read them can issue certificates that this CA's trust anchor accepts.
# Never trust DIR/root.pem outside development.
#
# init makes DIR (mode 0700) with a root CA and an intermediate CA signed by
# it, both EC P-256 and ecdsa-with-SHA256, backdated by 30 days so that the
# expired and not-yet-valid certificates below still nest inside the CAs'
# validity. It prints, on stdout, the paths of the certificates:
#   root=DIR/root.pem
#   intermediate=DIR/intermediate.pem
#   chain=DIR/chain.pem            (intermediate, then root)
# If DIR already holds a dev CA it says so on stderr, prints the same lines
# and exits 0; if DIR holds only part of one it refuses.
#
# sign issues, with the intermediate CA, a certificate for the PKCS#10
# request in CSR-FILE (PEM or DER) and writes it as PEM on stdout. The
# request's self-signature must verify. The certificate gets the request's
# subject, exactly as requested, and the request's subjectAltName (copied
# byte for byte, with its criticality); every other extension comes from the
# CA's profile for USAGE, and any other extension in the request is ignored:
#   sign  keyUsage critical nonRepudiation, digitalSignature
#   auth  keyUsage critical digitalSignature (+ keyEncipherment for RSA keys),
#         extendedKeyUsage clientAuth, serverAuth
#   tsa   keyUsage critical digitalSignature,
#         extendedKeyUsage critical timeStamping
# and, for all three, basicConstraints critical CA:FALSE, subject and
# authority key identifiers. The serial number is random. The certificate is
# valid for DAYS days (default 365, at most 3650) from 5 minutes ago.
# sign-expired issues one valid from 10 days ago until 1 day ago;
# sign-future one valid from 1 day from now for 365 days.
#
# Every certificate sign issues is also recorded in DIR/index.txt, the
# openssl CA database an OCSP responder reads.
#
# ocsp-setup makes an OCSP responder for the intermediate CA: a key
# (DIR/ocsp.key) and a delegated responder certificate (DIR/ocsp.pem,
# extendedKeyUsage OCSPSigning, issued by the intermediate), and records
# URL (DIR/ocsp-url) so that every certificate sign issues from then on
# names URL in its authorityInfoAccess. Running it again keeps the key and
# certificate and changes the URL.
#
# ocsp-answer is the responder itself, one request at a time: it reads a
# DER OCSP request on stdin and writes the response `openssl ocsp -index`
# makes from DIR/index.txt on stdout, signed by DIR/ocsp.pem, with
# nextUpdate MINUTES (default 60) after thisUpdate. It reads the index at
# each request, so a revocation shows at once. (openssl 3.0's own -port
# server binds every interface; softhsm-test/cmd/dev-ocsp serves this on
# loopback over HTTP.)
#
# revoke marks the certificate in CERT-FILE (PEM or DER) revoked now in
# DIR/index.txt, with REASON (an openssl CRL reason such as keyCompromise,
# default unspecified).
#
# Exit status: 0 done, 1 failure, 2 usage error, 3 the request was refused
# (not a certificate request, bad self-signature, malformed subjectAltName).
# A failure or refusal is told in one line on stderr.
#
# Needs only bash, openssl (3.0 or later) and coreutils. Nothing secret is
# ever put on a command line or printed: openssl reads the keys from files.
# openssl's x509 -req cannot set notBefore in 3.0 (-not_before came in 3.4),
# so every certificate, the self-signed root included, is issued with
# `openssl ca -startdate/-enddate`, with a throwaway database per run (so
# runs may go on in parallel).
set -euo pipefail
umask 077
export LC_ALL=C

prog=${0##*/}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

refuse() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 3
}

usage() {
	cat >&2 <<EOF
usage: $prog init DIR
       $prog sign DIR CSR-FILE USAGE [DAYS]
       $prog sign-expired DIR CSR-FILE USAGE
       $prog sign-future DIR CSR-FILE USAGE
       $prog ocsp-setup DIR URL
       $prog ocsp-answer DIR [MINUTES] < REQUEST.der > RESPONSE.der
       $prog revoke DIR CERT-FILE [REASON]
  USAGE is sign, auth or tsa; DAYS is 1 to 3650 (default 365).
  A development CA only: its keys are unencrypted files in DIR.
EOF
	exit 2
}

# bad_arg MESSAGE: a usage error told in one line.
bad_arg() {
	printf '%s: %s (see %s --help)\n' "$prog" "$*" "$prog" >&2
	exit 2
}

command -v openssl >/dev/null 2>&1 || die "openssl not found; install it with: apt-get install -y openssl"

tmp=
stage=
cleanup() {
	if [[ -n $tmp ]]; then rm -rf -- "$tmp"; fi
	if [[ -n $stage ]]; then rm -rf -- "$stage"; fi
}
trap cleanup EXIT

make_tmp() {
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/dev-ca.XXXXXX") || die "cannot make a temporary directory"
}

# utc_time SECONDS: the time SECONDS since the epoch as YYYYMMDDHHMMSSZ.
utc_time() {
	date -u -d "@$1" +%Y%m%d%H%M%SZ
}

# rand_hex N: N random bytes in hex.
rand_hex() {
	local h
	h=$(od -An -N "$1" -tx1 /dev/urandom) || die "cannot read /dev/urandom"
	h=${h//[[:space:]]/}
	printf '%s' "$h"
}

# write_ca_conf FILE: an openssl ca configuration whose database lives in
# $tmp. The subject of each request is kept as it is (-preserveDN) and no
# field is required; the extensions come from -extfile. Serial numbers are
# random (rand_serial); openssl 3.0's ca wants a serial file all the same.
write_ca_conf() {
	: >"$tmp/index.txt"
	rand_hex 16 >"$tmp/serial"
	echo >>"$tmp/serial"
	mkdir -p -- "$tmp/newcerts"
	cat >"$1" <<EOF
[ ca ]
default_ca = devca

[ devca ]
dir = $tmp
database = \$dir/index.txt
new_certs_dir = \$dir/newcerts
serial = \$dir/serial
rand_serial = yes
unique_subject = no
default_md = sha256
policy = policy_any
copy_extensions = none
email_in_dn = yes

[ policy_any ]
commonName = optional
EOF
}

# run_ca ARGS...: openssl ca in batch mode with the configuration in $tmp;
# its chatter stays in $tmp/ca.err, whose last line is shown if it fails.
run_ca() {
	if ! openssl ca -config "$tmp/ca.cnf" -batch -notext -preserveDN -rand_serial -md sha256 \
		"$@" </dev/null >"$tmp/ca.out" 2>"$tmp/ca.err"; then
		local line last=
		while IFS= read -r line; do
			[[ -n $line ]] && last=$line
		done <"$tmp/ca.err"
		die "openssl ca failed: ${last:-no message}"
	fi
}

ca_files=(root.key root.pem intermediate.key intermediate.pem chain.pem)

print_paths() {
	printf 'root=%s\n' "$1/root.pem"
	printf 'intermediate=%s\n' "$1/intermediate.pem"
	printf 'chain=%s\n' "$1/chain.pem"
}

cmd_init() {
	[[ $# -eq 1 ]] || usage
	local dir=$1 f have=0 missing=()
	[[ -n $dir ]] || usage
	if [[ -e $dir ]]; then
		[[ -d $dir ]] || die "$dir exists and is not a directory"
		[[ -O $dir ]] || die "$dir is not owned by $(id -un)"
		chmod 700 -- "$dir" || die "cannot chmod 700 $dir"
	else
		# Parents as umask 077 makes them; DIR itself 0700.
		mkdir -p -- "$dir" || die "cannot make $dir"
		chmod 700 -- "$dir" || die "cannot chmod 700 $dir"
	fi
	dir=$(cd -- "$dir" && pwd -P) || die "cannot enter $dir"

	for f in "${ca_files[@]}"; do
		if [[ -e $dir/$f ]]; then have=$((have + 1)); else missing+=("$f"); fi
	done
	if ((have == ${#ca_files[@]})); then
		echo "$prog: $dir already holds a dev CA; leaving it as it is" >&2
		print_paths "$dir"
		return 0
	fi
	((have == 0)) || die "$dir holds part of a dev CA (missing ${missing[*]}); remove it and run init again"

	make_tmp
	# The staging directory goes, with $tmp, on any exit.
	stage=$(mktemp -d "$dir/.init-XXXXXX") || die "cannot make a staging directory in $dir"

	local id now start root_end int_end
	id=$(rand_hex 4)
	now=$(date -u +%s)
	start=$(utc_time $((now - 30 * 86400)))
	root_end=$(utc_time $((now + 20 * 365 * 86400)))
	int_end=$(utc_time $((now + 10 * 365 * 86400)))

	write_ca_conf "$tmp/ca.cnf"
	cat >"$tmp/ext.cnf" <<EOF
[ v3_root ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ v3_intermediate ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF

	local name
	for name in root intermediate; do
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
			-pkeyopt ec_param_enc:named_curve -out "$stage/$name.key" 2>"$tmp/genpkey.err" ||
			die "openssl genpkey failed for the $name CA key"
		chmod 600 -- "$stage/$name.key"
	done

	openssl req -new -key "$stage/root.key" -utf8 \
		-subj "/C=FI/O=hsmsigner development/CN=hsmsigner Dev Root CA $id" \
		-out "$tmp/root.csr" 2>"$tmp/req.err" || die "openssl req failed for the root CA"
	run_ca -selfsign -keyfile "$stage/root.key" -in "$tmp/root.csr" \
		-extfile "$tmp/ext.cnf" -extensions v3_root \
		-startdate "$start" -enddate "$root_end" -out "$stage/root.pem"

	openssl req -new -key "$stage/intermediate.key" -utf8 \
		-subj "/C=FI/O=hsmsigner development/CN=hsmsigner Dev Intermediate CA $id" \
		-out "$tmp/intermediate.csr" 2>"$tmp/req.err" || die "openssl req failed for the intermediate CA"
	run_ca -cert "$stage/root.pem" -keyfile "$stage/root.key" -in "$tmp/intermediate.csr" \
		-extfile "$tmp/ext.cnf" -extensions v3_intermediate \
		-startdate "$start" -enddate "$int_end" -out "$stage/intermediate.pem"

	openssl verify -CAfile "$stage/root.pem" "$stage/intermediate.pem" >/dev/null 2>&1 ||
		die "the new intermediate CA does not verify against the new root"
	cat -- "$stage/intermediate.pem" "$stage/root.pem" >"$stage/chain.pem"
	chmod 644 -- "$stage/root.pem" "$stage/intermediate.pem" "$stage/chain.pem"

	# Keys first, chain.pem last: a run stopped half-way leaves a partial CA,
	# which the next init refuses rather than trusts.
	for f in "${ca_files[@]}"; do
		mv -- "$stage/$f" "$dir/$f" || die "cannot move $f into $dir"
	done
	echo "$prog: made a dev CA in $dir (development only: its keys are unencrypted files)" >&2
	print_paths "$dir"
}

# load_csr FILE: the request in FILE, PEM or DER, as $tmp/req.der.
load_csr() {
	local f=$1
	[[ -f $f && -r $f ]] || refuse "$f: not a readable file"
	if ! openssl req -in "$f" -inform PEM -outform DER -out "$tmp/req.der" 2>/dev/null &&
		! openssl req -in "$f" -inform DER -outform DER -out "$tmp/req.der" 2>/dev/null; then
		refuse "$f: not a PKCS#10 certificate request (PEM or DER)"
	fi
	local out
	out=$(openssl req -in "$tmp/req.der" -inform DER -noout -verify 2>&1 >/dev/null) || true
	# openssl 3.0 exits 0 even when the signature does not verify: read its word.
	[[ $out == *"verify OK"* && $out != *fail* ]] ||
		refuse "$f: the request's self-signature does not verify"
}

# csr_key_alg: the OID name of the request's public key algorithm.
csr_key_alg() {
	local line
	while IFS= read -r line; do
		if [[ $line == *"prim: OBJECT"*:* ]]; then
			printf '%s' "${line##*:}"
			return 0
		fi
	done < <(openssl req -in "$tmp/req.der" -inform DER -noout -pubkey | openssl asn1parse 2>/dev/null)
	die "cannot read the request's public key"
}

# csr_san_line: prints an extension line "subjectAltName = [critical,]DER:..."
# carrying the request's subjectAltName byte for byte, or nothing if it has
# none. More than one, or one of an unexpected shape, is refused.
csr_san_line() {
	local -a lines=()
	local line
	mapfile -t lines < <(openssl asn1parse -in "$tmp/req.der" -inform DER 2>/dev/null) ||
		refuse "cannot parse the request"
	local i n=${#lines[@]} found=0 critical='' offset='' depth
	for ((i = 0; i < n; i++)); do
		line=${lines[i]}
		[[ $line == *"prim: OBJECT"*":X509v3 Subject Alternative Name" ]] || continue
		((found == 0)) || refuse "the request has more than one subjectAltName"
		found=1
		# "  135:d=7  hl=2 l=   3 prim: OBJECT ..." -> depth 7
		depth=${line#*d=}
		depth=${depth%%[!0-9]*}
		local j=$((i + 1)) next
		next=${lines[j]:-}
		if [[ $next == *"d=$depth "*"prim: BOOLEAN"* ]]; then
			[[ $next == *":255" || $next == *":1" ]] && critical="critical,"
			j=$((j + 1))
			next=${lines[j]:-}
		fi
		[[ $next == *"d=$depth "*"prim: OCTET STRING"* ]] || refuse "the request's subjectAltName is malformed"
		offset=${next%%:*}
		offset=${offset//[[:space:]]/}
	done
	((found)) || return 0
	[[ $offset =~ ^[0-9]+$ ]] || refuse "the request's subjectAltName is malformed"
	openssl asn1parse -in "$tmp/req.der" -inform DER -strparse "$offset" -noout -out "$tmp/san.der" \
		>/dev/null 2>&1 || refuse "the request's subjectAltName is malformed"
	local hex
	hex=$(od -An -v -tx1 "$tmp/san.der") || die "cannot read the subjectAltName"
	hex=${hex//[[:space:]]/}
	[[ -n $hex ]] || refuse "the request's subjectAltName is empty"
	printf 'subjectAltName = %sDER:%s\n' "$critical" "$hex"
}

cmd_sign() {
	local mode=$1
	shift
	local dir csr usage_name days=365
	case $mode in
	sign) [[ $# -eq 3 || $# -eq 4 ]] || usage ;;
	*) [[ $# -eq 3 ]] || usage ;;
	esac
	dir=$1 csr=$2 usage_name=$3
	if [[ $# -eq 4 ]]; then
		days=$4
		if ! [[ $days =~ ^[1-9][0-9]{0,3}$ ]] || ((days > 3650)); then
			bad_arg "DAYS must be a whole number from 1 to 3650, not \"$days\""
		fi
	fi
	case $usage_name in
	sign | auth | tsa) ;;
	*) bad_arg "unknown USAGE \"$usage_name\" (want sign, auth or tsa)" ;;
	esac

	local f
	for f in intermediate.pem intermediate.key chain.pem; do
		[[ -f $dir/$f ]] || die "$dir is not a dev CA (no $f); run: $prog init $dir"
	done

	make_tmp
	load_csr "$csr"

	local alg
	alg=$(csr_key_alg)
	local ku eku=
	case $usage_name in
	sign) ku="critical, nonRepudiation, digitalSignature" ;;
	auth)
		if [[ $alg == rsaEncryption ]]; then
			ku="critical, digitalSignature, keyEncipherment"
		else
			ku="critical, digitalSignature"
		fi
		eku="clientAuth, serverAuth"
		;;
	tsa)
		ku="critical, digitalSignature"
		eku="critical, timeStamping"
		;;
	esac

	{
		echo "[ leaf ]"
		echo "basicConstraints = critical, CA:FALSE"
		echo "keyUsage = $ku"
		[[ -z $eku ]] || echo "extendedKeyUsage = $eku"
		echo "subjectKeyIdentifier = hash"
		echo "authorityKeyIdentifier = keyid:always"
		if [[ -f $dir/ocsp-url ]]; then
			echo "authorityInfoAccess = OCSP;URI:$(<"$dir/ocsp-url")"
		fi
		csr_san_line
	} >"$tmp/ext.cnf"

	local now start end
	now=$(date -u +%s)
	case $mode in
	sign)
		start=$((now - 300))
		end=$((start + days * 86400))
		;;
	sign-expired)
		start=$((now - 10 * 86400))
		end=$((now - 86400))
		;;
	sign-future)
		start=$((now + 86400))
		end=$((start + 365 * 86400))
		;;
	esac

	write_ca_conf "$tmp/ca.cnf"
	openssl req -in "$tmp/req.der" -inform DER -out "$tmp/req.pem" 2>/dev/null || die "cannot convert the request"
	run_ca -cert "$dir/intermediate.pem" -keyfile "$dir/intermediate.key" -in "$tmp/req.pem" \
		-extfile "$tmp/ext.cnf" -extensions leaf \
		-startdate "$(utc_time "$start")" -enddate "$(utc_time "$end")" -out "$tmp/cert.pem"
	# The throwaway database holds this one certificate's line: add it to
	# the CA's own index, under its lock, for the OCSP responder.
	with_index_lock "$dir" append_index "$dir" || die "cannot record the certificate in $dir/index.txt"
	openssl x509 -in "$tmp/cert.pem" -outform PEM 2>/dev/null || die "openssl ca wrote no certificate"
}

# with_index_lock DIR CMD...: runs CMD holding DIR/index.lock.
with_index_lock() {
	local dir=$1
	shift
	(
		flock 9 || exit 1
		"$@"
	) 9>>"$dir/index.lock"
}

cmd_ocsp_setup() {
	[[ $# -eq 2 ]] || usage
	local dir=$1 url=$2
	[[ $url =~ ^https?://[^[:space:]]+$ ]] || bad_arg "URL must be an http:// or https:// address, not \"$url\""
	local f
	for f in intermediate.pem intermediate.key; do
		[[ -f $dir/$f ]] || die "$dir is not a dev CA (no $f); run: $prog init $dir"
	done
	make_tmp
	if [[ ! -f $dir/ocsp.pem ]]; then
		openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
			-pkeyopt ec_param_enc:named_curve -out "$tmp/ocsp.key" 2>"$tmp/genpkey.err" ||
			die "openssl genpkey failed for the OCSP responder key"
		openssl req -new -key "$tmp/ocsp.key" -utf8 \
			-subj "/C=FI/O=hsmsigner development/CN=hsmsigner Dev OCSP Responder $(rand_hex 4)" \
			-out "$tmp/ocsp.csr" 2>"$tmp/req.err" || die "openssl req failed for the OCSP responder"
		cat >"$tmp/ext.cnf" <<EOF
[ ocsp ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, OCSPSigning
noCheck = ignored
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
		local now
		now=$(date -u +%s)
		write_ca_conf "$tmp/ca.cnf"
		run_ca -cert "$dir/intermediate.pem" -keyfile "$dir/intermediate.key" -in "$tmp/ocsp.csr" \
			-extfile "$tmp/ext.cnf" -extensions ocsp \
			-startdate "$(utc_time $((now - 300)))" -enddate "$(utc_time $((now + 2 * 365 * 86400)))" -out "$tmp/ocsp.pem"
		openssl x509 -in "$tmp/ocsp.pem" -out "$tmp/ocsp.crt" 2>/dev/null || die "openssl ca wrote no responder certificate"
		chmod 600 -- "$tmp/ocsp.key"
		chmod 644 -- "$tmp/ocsp.crt"
		mv -- "$tmp/ocsp.key" "$dir/ocsp.key" || die "cannot move ocsp.key into $dir"
		mv -- "$tmp/ocsp.crt" "$dir/ocsp.pem" || die "cannot move ocsp.pem into $dir"
	fi
	touch -- "$dir/index.txt"
	printf '%s\n' "$url" >"$tmp/ocsp-url"
	chmod 644 -- "$tmp/ocsp-url"
	mv -- "$tmp/ocsp-url" "$dir/ocsp-url" || die "cannot write $dir/ocsp-url"
	echo "$prog: OCSP responder certificate $dir/ocsp.pem; certificates signed from now on name $url" >&2
}

cmd_ocsp_answer() {
	[[ $# -eq 1 || $# -eq 2 ]] || usage
	local dir=$1 minutes=${2:-60}
	[[ $minutes =~ ^[1-9][0-9]{0,5}$ ]] || bad_arg "MINUTES must be a whole number from 1, not \"$minutes\""
	local f
	for f in ocsp.pem ocsp.key intermediate.pem index.txt; do
		[[ -f $dir/$f ]] || die "$dir has no OCSP responder (no $f); run: $prog ocsp-setup $dir URL"
	done
	make_tmp
	head -c 65536 >"$tmp/req.der"
	with_index_lock "$dir" cp -- "$dir/index.txt" "$tmp/index.txt" || die "cannot read $dir/index.txt"
	if ! openssl ocsp -index "$tmp/index.txt" -rsigner "$dir/ocsp.pem" -rkey "$dir/ocsp.key" \
		-CA "$dir/intermediate.pem" -nmin "$minutes" -reqin "$tmp/req.der" -respout "$tmp/resp.der" \
		>"$tmp/ocsp.out" 2>"$tmp/ocsp.err"; then
		die "openssl ocsp failed: $(tail -n 1 "$tmp/ocsp.err")"
	fi
	cat -- "$tmp/resp.der"
}

# append_index DIR: adds the throwaway database's lines to DIR/index.txt
# (run under the index lock).
append_index() {
	cat -- "$tmp/index.txt" >>"$1/index.txt"
}

# revoke_in_index DIR SERIAL WHEN: marks SERIAL revoked in DIR/index.txt
# (run under the index lock); exit 3 if it is not a valid certificate there.
revoke_in_index() {
	awk -F '\t' -v OFS='\t' -v s="$2" -v r="$3" '
		$4 == s && $1 == "V" { $1 = "R"; $3 = r; found = 1 }
		{ print }
		END { exit found ? 0 : 3 }
	' "$1/index.txt" >"$tmp/index.new" && mv -- "$tmp/index.new" "$1/index.txt"
}

cmd_revoke() {
	[[ $# -eq 2 || $# -eq 3 ]] || usage
	local dir=$1 cert=$2 reason=${3:-unspecified}
	case $reason in
	unspecified | keyCompromise | CACompromise | affiliationChanged | superseded | cessationOfOperation | certificateHold) ;;
	*) bad_arg "unknown REASON \"$reason\"" ;;
	esac
	[[ -f $dir/index.txt ]] || die "$dir has no certificate index (no index.txt)"
	make_tmp
	if ! openssl x509 -in "$cert" -noout -serial >"$tmp/serial" 2>/dev/null &&
		! openssl x509 -in "$cert" -inform DER -noout -serial >"$tmp/serial" 2>/dev/null; then
		refuse "$cert: not a certificate (PEM or DER)"
	fi
	local serial
	serial=$(<"$tmp/serial")
	serial=${serial#serial=}
	with_index_lock "$dir" revoke_in_index "$dir" "$serial" "$(date -u +%y%m%d%H%M%SZ),$reason" ||
		die "serial $serial is not a valid certificate in $dir/index.txt"
	echo "$prog: revoked serial $serial ($reason)" >&2
}

[[ $# -ge 1 ]] || usage
case $1 in
init)
	shift
	cmd_init "$@"
	;;
sign | sign-expired | sign-future) cmd_sign "$@" ;;
ocsp-setup)
	shift
	cmd_ocsp_setup "$@"
	;;
ocsp-answer)
	shift
	cmd_ocsp_answer "$@"
	;;
revoke)
	shift
	cmd_revoke "$@"
	;;
-h | --help | help) usage ;;
*) usage ;;
esac
