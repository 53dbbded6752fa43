#!/bin/sh
# diskci netboot init (busybox sh, PID 1 of the initramfs).
#
# Kernel command line (docs/artifacts.md):
#   diskci.root=<http(s) URL | relative URL | partlabel:NAME | cdrom:PATH>   the root image
#   diskci.root_sha256=<64 hex digits>      required: the image is mounted only if it matches
#   diskci.root_base=<URL>                  base for a relative diskci.root (boot.ipxe passes its own URI)
#   diskci.root_size=<bytes>                optional: an http root must be exactly this long; a partlabel:
#                                           root is read to this length (default: from the superblock)
#   diskci.not_after=<unix time>            optional: refuse to boot after this time (a signed UKI's
#                                           validity window, see diskci.platform.secureboot)
#   diskci.report=<URL>                     optional: progress and errors POSTed there as JSON
#   diskci.on_failure=halt|reboot|shell     what to do after a failure (default halt)
#   ip=dhcp|off                             network configuration (default dhcp)
#
# Steps: load modules (modules.dep via modprobe; the disk and CD-ROM drivers only for a local root),
# bring the network up (udhcpc, retries with backoff), copy the root image into RAM (downloads retried),
# check its size and sha256, and only then mount it read-only under a tmpfs overlay, move /dev /proc /sys /run
# into it and switch_root into its /sbin/init.
# Every failure prints one line starting "diskci: error <reason>:" and is reported; a bad image is never
# mounted. Sourced with DISKCI_INIT_LIB=1 it only defines its functions (the unit tests use that).

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

RUN=/run/diskci
IMAGE=$RUN/root.img
NEWROOT=/newroot
MODULES_LIST=/etc/diskci/modules
DHCP_SCRIPT=/etc/diskci/udhcpc.sh
DHCP_TRIES=${DHCP_TRIES:-5}
FETCH_TRIES=${FETCH_TRIES:-5}
DEVICE_WAIT=${DEVICE_WAIT:-30}

ROOT=
ROOT_SHA256=
ROOT_BASE=
ROOT_SIZE=
NOT_AFTER=
SECURE_BOOT=unknown
REPORT=
ON_FAILURE=halt
IP_MODE=dhcp
ROOT_KIND=
ROOT_URL=
NET_UP=0
NET_DEV=

say() {
	echo "diskci: $*"
}

uptime_s() {
	if [ -r /proc/uptime ]; then
		read -r up _ </proc/uptime
		echo "${up:-0}"
	else
		echo 0
	fi
}

# JSON string contents: backslash and double quote escaped, control characters dropped.
json_escape() {
	printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g'
}

# report EVENT [REASON MESSAGE]: POST one JSON object to diskci.report (when given and reachable).
report() {
	[ -n "$REPORT" ] && [ "$NET_UP" = 1 ] || return 0
	mac=
	[ -n "$NET_DEV" ] && [ -r "/sys/class/net/$NET_DEV/address" ] && read -r mac <"/sys/class/net/$NET_DEV/address"
	body="{\"event\":\"$(json_escape "$1")\""
	[ -n "${2:-}" ] && body="$body,\"reason\":\"$(json_escape "$2")\""
	[ -n "${3:-}" ] && body="$body,\"message\":\"$(json_escape "$3")\""
	body="$body,\"root\":\"$(json_escape "${ROOT_URL:-$ROOT}")\",\"root_sha256\":\"$(json_escape "$ROOT_SHA256")\""
	body="$body,\"mac\":\"$(json_escape "$mac")\",\"secure_boot\":\"$SECURE_BOOT\",\"uptime\":$(uptime_s)}"
	# (busybox 1.35's wget -T crashes: the time limit comes from timeout instead)
	timeout 15 wget -q -O /dev/null --header "Content-Type: application/json" --post-data "$body" "$REPORT" \
		2>/dev/null || say "warning: could not report '$1' to $REPORT"
}

# fail REASON MESSAGE: the one console line, the report, then diskci.on_failure. Never returns.
fail() {
	say "error $1: $2"
	report error "$1" "$2"
	if [ "$$" != 1 ]; then
		exit 1 # not the machine's init (a test): never halt the host
	fi
	case $ON_FAILURE in
	reboot)
		sleep 5
		reboot -f
		;;
	shell)
		say "starting a shell (diskci.on_failure=shell)"
		while :; do setsid cttyhack sh || sh; done
		;;
	*)
		sync
		halt -f
		;;
	esac
	while :; do sleep 3600; done
}

# parse_cmdline "CMDLINE": set the variables above from the kernel command line.
parse_cmdline() {
	set -f
	for arg in $1; do
		case $arg in
		diskci.root=*) ROOT=${arg#*=} ;;
		diskci.root_sha256=*) ROOT_SHA256=$(echo "${arg#*=}" | tr 'A-F' 'a-f') ;;
		diskci.root_base=*) ROOT_BASE=${arg#*=} ;;
		diskci.root_size=*) ROOT_SIZE=${arg#*=} ;;
		diskci.not_after=*) NOT_AFTER=${arg#*=} ;;
		diskci.report=*) REPORT=${arg#*=} ;;
		diskci.on_failure=*) ON_FAILURE=${arg#*=} ;;
		ip=*) IP_MODE=${arg#*=} ;;
		esac
	done
	set +f
}

# resolve_url BASE REF: REF made absolute against BASE (RFC 3986 without dot-segment removal).
resolve_url() {
	case $2 in
	*://*) echo "$2" ;;
	/*)
		rest=${1#*://}
		echo "${1%%://*}://${rest%%/*}$2"
		;;
	*)
		base=${1%%[?#]*}
		case ${base#*://} in
		*/*) echo "${base%/*}/$2" ;;
		*) echo "$base/$2" ;;
		esac
		;;
	esac
}

# check_params: refuse an incomplete or malformed command line; sets ROOT_KIND and ROOT_URL.
check_params() {
	case $ON_FAILURE in
	halt | reboot | shell) ;;
	*)
		bad=$ON_FAILURE
		ON_FAILURE=halt
		fail bad_parameter "diskci.on_failure=$bad is not one of halt, reboot, shell"
		;;
	esac
	[ -n "$ROOT" ] || fail missing_parameter "no diskci.root= on the kernel command line"
	[ -n "$ROOT_SHA256" ] || fail missing_parameter "no diskci.root_sha256= on the kernel command line"
	case $ROOT_SHA256 in
	*[!0-9a-f]*) fail bad_parameter "diskci.root_sha256=$ROOT_SHA256 is not 64 hexadecimal digits" ;;
	esac
	[ "${#ROOT_SHA256}" = 64 ] || fail bad_parameter "diskci.root_sha256=$ROOT_SHA256 is not 64 hexadecimal digits"
	case $ROOT_SIZE in
	*[!0-9]*) fail bad_parameter "diskci.root_size=$ROOT_SIZE is not a number of bytes" ;;
	esac
	case $NOT_AFTER in
	*[!0-9]*) fail bad_parameter "diskci.not_after=$NOT_AFTER is not a Unix time" ;;
	esac
	case $IP_MODE in
	dhcp | on | any | both) IP_MODE=dhcp ;;
	off | none) IP_MODE=off ;;
	*) fail bad_parameter "ip=$IP_MODE is not supported (use ip=dhcp or ip=off)" ;;
	esac
	case $ROOT in
	http://* | https://*)
		ROOT_KIND=http
		ROOT_URL=$ROOT
		;;
	partlabel:?*) ROOT_KIND=partlabel ;;
	cdrom:?*) ROOT_KIND=cdrom ;;
	*://* | partlabel:* | cdrom:*) fail bad_parameter "diskci.root=$ROOT: unsupported or empty root source" ;;
	*)
		case $ROOT_BASE in
		http://* | https://*) ;;
		*) fail bad_parameter "diskci.root=$ROOT is relative but diskci.root_base= is not an http(s) URL" ;;
		esac
		ROOT_KIND=http
		ROOT_URL=$(resolve_url "$ROOT_BASE" "$ROOT")
		;;
	esac
	if [ "$ROOT_KIND" = http ] && [ "$IP_MODE" = off ]; then
		fail bad_parameter "diskci.root=$ROOT_URL needs the network, but ip=off"
	fi
}

# secure_boot_state: on, off (also for a BIOS boot) or unknown, from the firmware's SecureBoot variable.
secure_boot_state() {
	[ -d /sys/firmware/efi ] || {
		echo off
		return 0
	}
	var=/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c
	[ -e "$var" ] || mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
	if [ -r "$var" ]; then
		# 4 bytes of attributes, then the value (read whole: efivarfs files do not seek)
		set -- $(dd if="$var" bs=64 count=1 2>/dev/null | od -An -tu1)
		case ${5:-} in
		1)
			echo on
			return 0
			;;
		0)
			echo off
			return 0
			;;
		esac
	fi
	# the kernel's own word (Debian kernels print it on every architecture)
	case $(dmesg 2>/dev/null | grep -o 'Secure boot [a-z]*' | head -n 1) in
	"Secure boot enabled") echo on ;;
	"Secure boot disabled") echo off ;;
	*) echo unknown ;;
	esac
}

# check_not_after: refuse an image whose validity window is over (a replayed, older signed UKI).
# The clock is the machine's own (RTC), which nobody on the network sets before this point.
check_not_after() {
	[ -n "$NOT_AFTER" ] || return 0
	now=$(date +%s)
	if [ "$now" -gt "$NOT_AFTER" ]; then
		fail image_expired "this boot image was valid until $NOT_AFTER and the clock says $now: fetch a current one from the platform"
	fi
}

mount_api() {
	mkdir -p /dev /proc /sys /run
	mount -t devtmpfs -o mode=0755 devtmpfs /dev 2>/dev/null
	mount -t proc -o nosuid,nodev,noexec proc /proc
	mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
	mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
	mkdir -p "$RUN"
}

# load_modules: the netboot list, and for a disk or CD-ROM root also the disk, CD-ROM and fs drivers.
load_modules() {
	lists=$MODULES_LIST
	[ "$ROOT_KIND" = http ] || lists="$lists $MODULES_LIST.local"
	for list in $lists; do
		[ -r "$list" ] || continue
		# one module per line; "quiet" after a name: a soft dependency that may not apply to this machine
		while read -r mod flag; do
			[ -n "$mod" ] || continue
			modprobe "$mod" 2>/dev/null || [ "$flag" = quiet ] || say "warning: could not load module $mod"
		done <"$list"
	done
}

net_ifaces() {
	for d in /sys/class/net/*; do
		n=${d##*/}
		[ "$n" = lo ] || [ ! -e "$d" ] || echo "$n"
	done
}

# net_up: DHCP on every interface in turn until one gets a lease; retried with backoff.
net_up() {
	ip link set lo up 2>/dev/null
	waited=0
	while [ -z "$(net_ifaces)" ] && [ "$waited" -lt 10 ]; do
		sleep 1
		waited=$((waited + 1))
	done
	attempt=1
	delay=1
	while :; do
		for dev in $(net_ifaces); do
			ip link set "$dev" up 2>/dev/null
			if udhcpc -i "$dev" -f -q -n -t 3 -T 2 -s "$DHCP_SCRIPT" >"$RUN/udhcpc.log" 2>&1; then
				NET_DEV=$dev
				NET_UP=1
				say "network up on $dev ($(cat "$RUN/net" 2>/dev/null))"
				return 0
			fi
		done
		[ "$attempt" -lt "$DHCP_TRIES" ] || break
		say "no DHCP lease on $(net_ifaces | tr '\n' ' ')(attempt $attempt of $DHCP_TRIES); retrying in ${delay}s"
		sleep "$delay"
		attempt=$((attempt + 1))
		delay=$((delay * 2))
	done
	return 1
}

# fetch_http: download ROOT_URL to IMAGE, retried with backoff.
fetch_http() {
	attempt=1
	delay=2
	tls=
	case $ROOT_URL in https://*) tls=--no-check-certificate ;; esac
	say "fetching $ROOT_URL"
	while :; do
		rm -f "$IMAGE"
		# (not hashed while it downloads: wget | tee | sha256sum took 28 s instead of 8.4 s under TCG)
		if wget -q $tls -O "$IMAGE" "$ROOT_URL" 2>"$RUN/wget.log"; then
			return 0
		fi
		[ "$attempt" -lt "$FETCH_TRIES" ] || break
		say "download of $ROOT_URL failed (attempt $attempt of $FETCH_TRIES: $(tail -n 1 "$RUN/wget.log")); retrying in ${delay}s"
		sleep "$delay"
		attempt=$((attempt + 1))
		delay=$((delay * 2))
	done
	rm -f "$IMAGE"
	fail download_failed "could not download $ROOT_URL after $FETCH_TRIES attempts: $(tail -n 1 "$RUN/wget.log")"
}

# wait_device FUNCTION DESCRIPTION: poll FUNCTION (which prints a device) for DEVICE_WAIT seconds.
wait_device() {
	waited=0
	while [ "$waited" -le "$((DEVICE_WAIT * 2))" ]; do
		dev=$($1) && [ -n "$dev" ] && echo "$dev" && return 0
		sleep 0.5
		waited=$((waited + 1))
	done
	return 1
}

find_partlabel() {
	for u in /sys/class/block/*/uevent; do
		if grep -qx "PARTNAME=${ROOT#partlabel:}" "$u" 2>/dev/null; then
			echo "/dev/$(sed -n 's/^DEVNAME=//p' "$u")"
			return 0
		fi
	done
	return 1
}

# squashfs_size DEVICE: bytes_used from the superblock, rounded up to 4 KiB as mksquashfs pads it.
squashfs_size() {
	magic=$(dd if="$1" bs=4 count=1 2>/dev/null)
	[ "$magic" = hsqs ] || return 1
	used=$(dd if="$1" bs=1 skip=40 count=8 2>/dev/null | od -An -tu8 | tr -d ' ')
	[ -n "$used" ] || return 1
	echo $(((used + 4095) / 4096 * 4096))
}

fetch_partlabel() {
	dev=$(wait_device find_partlabel) || fail device_not_found "no partition labelled ${ROOT#partlabel:} after ${DEVICE_WAIT}s"
	size=$ROOT_SIZE
	[ -n "$size" ] || size=$(squashfs_size "$dev") || size=
	say "copying $dev (partlabel ${ROOT#partlabel:}) into RAM"
	if [ -n "$size" ]; then
		head -c "$size" "$dev" >"$IMAGE" || fail read_failed "could not read $size bytes from $dev"
	else
		cat "$dev" >"$IMAGE" || fail read_failed "could not read $dev"
	fi
}

find_cdrom() {
	mkdir -p "$RUN/cdrom"
	for d in /sys/class/block/sr* /sys/class/block/*; do
		[ -e "$d" ] || continue
		dev=/dev/${d##*/}
		if mount -t iso9660 -o ro "$dev" "$RUN/cdrom" 2>/dev/null; then
			if [ -f "$RUN/cdrom/${ROOT#cdrom:}" ]; then
				echo "$dev"
				return 0
			fi
			umount "$RUN/cdrom"
		fi
	done
	return 1
}

fetch_cdrom() {
	path=${ROOT#cdrom:}
	dev=$(wait_device find_cdrom) || fail device_not_found "no CD-ROM holding $path after ${DEVICE_WAIT}s"
	say "copying $path from $dev into RAM"
	cp "$RUN/cdrom/$path" "$IMAGE" || fail read_failed "could not copy $path from $dev"
	umount "$RUN/cdrom"
}

fetch_root() {
	case $ROOT_KIND in
	http) fetch_http ;;
	partlabel) fetch_partlabel ;;
	cdrom) fetch_cdrom ;;
	esac
	say "fetched $(wc -c <"$IMAGE") bytes"
	report fetched
}

# verify_root: the image in RAM must have the expected sha256, or it is deleted and never mounted.
verify_root() {
	if [ -n "$ROOT_SIZE" ] && [ "$(wc -c <"$IMAGE")" != "$ROOT_SIZE" ]; then
		got=$(wc -c <"$IMAGE")
		rm -f "$IMAGE"
		fail size_mismatch "size mismatch for ${ROOT_URL:-$ROOT}: expected $ROOT_SIZE bytes, got $got; not mounting it"
	fi
	actual=$(sha256sum "$IMAGE" | cut -d ' ' -f 1)
	if [ "$actual" != "$ROOT_SHA256" ]; then
		rm -f "$IMAGE"
		fail sha256_mismatch "sha256 mismatch for ${ROOT_URL:-$ROOT}: expected $ROOT_SHA256, got $actual; not mounting it"
	fi
	say "verified sha256 $actual"
	report verified
}

mount_root() {
	mkdir -p "$RUN/lower" "$RUN/rw" "$NEWROOT"
	mount -t squashfs -o ro,loop "$IMAGE" "$RUN/lower" 2>/dev/null ||
		mount -t erofs -o ro,loop "$IMAGE" "$RUN/lower" 2>/dev/null ||
		fail mount_failed "could not mount the verified root image (squashfs or erofs)"
	mount -t tmpfs -o mode=0755 tmpfs "$RUN/rw" || fail mount_failed "could not mount the tmpfs for the overlay"
	mkdir -p "$RUN/rw/upper" "$RUN/rw/work"
	mount -t overlay -o "lowerdir=$RUN/lower,upperdir=$RUN/rw/upper,workdir=$RUN/rw/work" overlay "$NEWROOT" ||
		fail mount_failed "could not mount the overlay on the root image"
	[ -e "$NEWROOT/sbin/init" ] || [ -L "$NEWROOT/sbin/init" ] ||
		fail no_init "the root image has no /sbin/init"
}

switch_to_root() {
	say "switching root"
	report switching_root
	for m in dev proc sys run; do
		mkdir -p "$NEWROOT/$m"
		mount --move "/$m" "$NEWROOT/$m" || fail mount_failed "could not move /$m into the new root"
	done
	exec switch_root "$NEWROOT" /sbin/init
}

main() {
	mount_api
	parse_cmdline "$(cat /proc/cmdline)"
	check_params
	say "starting (root ${ROOT_URL:-$ROOT})"
	load_modules
	SECURE_BOOT=$(secure_boot_state)
	say "secure boot: $SECURE_BOOT"
	# the network is needed for an http(s) root, and wanted for reports; local roots try DHCP once
	if [ "$IP_MODE" = dhcp ] && { [ "$ROOT_KIND" = http ] || [ -n "$REPORT" ]; }; then
		[ "$ROOT_KIND" = http ] || DHCP_TRIES=1
		if ! net_up; then
			[ "$ROOT_KIND" != http ] || fail network_unavailable "no DHCP lease on any interface after $DHCP_TRIES attempts"
			say "warning: no network; continuing without it"
		fi
	fi
	check_not_after
	fetch_root
	verify_root
	mount_root
	switch_to_root
}

[ "${DISKCI_INIT_LIB:-0}" = 1 ] || main "$@"
