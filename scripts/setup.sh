#!/usr/bin/env bash
# Hand NVMe controllers to vfio-pci for ironvme's userspace driver, give them back to the
# kernel nvme driver, and show where every NVMe controller stands. In the spirit of
# SPDK's scripts/setup.sh; used on real hosts and inside the QEMU test guest.
#
#   scripts/setup.sh status               one line per NVMe controller (class 0x010802)
#   scripts/setup.sh bind BDF...          unbind from the current driver, bind to vfio-pci
#   scripts/setup.sh unbind BDF...        give back to the kernel nvme driver
#   HUGEMEM=MiB scripts/setup.sh CMD ...  also reserve MiB of 2 MiB hugepages (after
#                                         bind/unbind checks pass; HUGEMEM=0 frees them)
#   HUGEMEM=MiB scripts/setup.sh          only reserve hugepages
#
# Only the devices named on the command line are ever touched, through driver_override
# (never new_id, which would grab every device with the same vendor:device). Before
# touching anything, bind refuses a BDF that does not exist or is not an NVMe controller,
# a controller without an IOMMU group, and a controller any of whose namespaces (or their
# partitions) is mounted, used as swap, held by another block device (device mapper,
# md, ...) or open by a process; unbind refuses a device whose VFIO group is open.
#
# Exit status: 0 done, 1 refused or failed (the message says which device and why),
# 2 usage error.

set -euo pipefail
shopt -s nullglob

PROG=setup.sh
PCI=/sys/bus/pci
NVME_CLASS=0x010802
HUGEPAGES=/sys/kernel/mm/hugepages/hugepages-2048kB

# Helpers return their result in REPLY (or an array named in the comment) instead of
# printing it: command substitution forks, and a fork costs tens of milliseconds in the
# TCG test guest. Apart from lspci in `status` and one find for open files, everything
# below is a bash builtin.

usage() {
	local line
	[ "${1:-0}" -eq 0 ] || exec >&2
	while IFS= read -r line; do
		case $line in
		'#!'*) ;;
		'#'*) line=${line#\#} && echo "${line# }" ;;
		*) break ;;
		esac
	done < "$0"
	exit "${1:-0}"
}

say() { echo "$PROG: $*"; }
err() { echo "$PROG: $*" >&2; }
die() {
	err "$*"
	exit 1
}

need_root() {
	[ "$EUID" -eq 0 ] || die "$1 needs root (it writes to sysfs)"
}

# Read the first line of sysfs/proc file $1 into REPLY (empty if unreadable).
get() {
	REPLY=
	read -r REPLY < "$1" 2>/dev/null || true
}

# ---- PCI devices ---------------------------------------------------------------------

# Normalize a PCI address to DDDD:BB:DD.F (lower case) in REPLY; empty if malformed.
norm_bdf() {
	REPLY=${1,,}
	[[ $REPLY =~ ^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] && REPLY=0000:$REPLY
	[[ $REPLY =~ ^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$ ]] || REPLY=
}

# Driver bound to BDF $1 ("none" if unbound).
driver_of() {
	local d
	REPLY=none
	[ -e "$PCI/devices/$1/driver" ] || return 0
	for d in "$PCI"/drivers/*; do
		if [ -e "$d/$1" ]; then
			REPLY=${d##*/}
			return 0
		fi
	done
}

# IOMMU group number of BDF $1 (empty if it has none).
iommu_group_of() {
	local g
	REPLY=
	[ -e "$PCI/devices/$1/iommu_group" ] || return 0
	for g in /sys/kernel/iommu_groups/*; do
		if [ -e "$g/devices/$1" ]; then
			REPLY=${g##*/}
			return 0
		fi
	done
}

# The kernel's controller name (nvmeN) of BDF $1 while bound to nvme, else empty.
ctrl_of() {
	local c
	REPLY=
	for c in "$PCI/devices/$1"/nvme/nvme*; do
		REPLY=${c##*/}
	done
}

# DISKS: namespace block devices of controller nvmeN. Without native multipath they are
# listed as nvmeNnM; with it the controller lists paths nvmeScNnH whose disk is nvmeSnH.
ctrl_disks() {
	local p n
	DISKS=()
	[ -n "$1" ] || return 0
	for p in /sys/class/nvme/"$1"/nvme*n*; do
		n=${p##*/}
		[[ $n =~ ^nvme([0-9]+)c[0-9]+n([0-9]+)$ ]] && n=nvme${BASH_REMATCH[1]}n${BASH_REMATCH[2]}
		[ -e "/sys/class/block/$n" ] && DISKS+=("$n")
	done
	return 0
}

# ---- is a block device in use? -------------------------------------------------------

# MOUNTINFO, SWAPS: read once per run.
load_mount_tables() {
	local line
	MOUNTINFO=()
	while IFS= read -r line; do MOUNTINFO+=("$line"); done < /proc/self/mountinfo ||
		die "cannot read /proc/self/mountinfo"
	SWAPS=()
	while read -r line _; do
		[ "$line" = Filename ] || SWAPS+=("$line")
	done < /proc/swaps || die "cannot read /proc/swaps"
}

# USES: what block device $1 is used for: "mounted on /mnt (ext4)", "swap",
# "held by dm-0". Mounts match by major:minor or by source path.
uses_of() {
	local d=$1 dev line f h i
	local -a m
	USES=()
	get "/sys/class/block/$d/dev"
	dev=$REPLY
	[ -n "$dev" ] || die "cannot read /sys/class/block/$d/dev"
	for line in "${MOUNTINFO[@]}"; do
		read -r -a m <<< "$line"
		i=6
		while [ $i -lt ${#m[@]} ] && [ "${m[i]}" != - ]; do i=$((i + 1)); done
		[ $((i + 2)) -lt ${#m[@]} ] || continue
		if [ "${m[2]}" = "$dev" ] || [ "${m[i + 2]}" = "/dev/$d" ]; then
			USES+=("mounted on ${m[4]} (${m[i + 1]})")
		fi
	done
	for f in "${SWAPS[@]}"; do
		[ -L "$f" ] && f=$(readlink -f "$f")
		[ "$f" = "/dev/$d" ] && USES+=("in use as swap")
	done
	for h in /sys/class/block/"$d"/holders/*; do
		USES+=("held by /dev/${h##*/} (device mapper, md, ...)")
	done
	return 0
}

# OPENERS: "PATH PID (COMM)" for each process holding one of the given /dev paths open,
# from a single scan of /proc/*/fd. Our own processes (this script and the find, which
# inherit our descriptors) are left out. Processes come and go while we look, so find's
# complaints about vanished ones are expected and ignored.
openers_of() {
	local -a expr=()
	local path target pid stat ppid fd finder
	local -A seen=()
	OPENERS=()
	for path in "$@"; do expr+=(-o -lname "$path"); done
	[ ${#expr[@]} -gt 0 ] || return 0
	exec {fd}< <(exec find /proc/[0-9]*/fd -mindepth 1 -maxdepth 1 \( "${expr[@]:1}" \) \
		-printf '%p %l\n' 2>/dev/null)
	finder=$!
	while read -r path target <&"$fd"; do
		pid=${path#/proc/}
		pid=${pid%%/*}
		if [ "$pid" = "$$" ] || [ "$pid" = "$finder" ] || [ -n "${seen[$pid $target]:-}" ]; then
			continue
		fi
		seen[$pid $target]=1
		get "/proc/$pid/stat"
		stat=${REPLY##*) }
		read -r _ ppid _ <<< "$stat"
		[ "$ppid" != "$$" ] || continue
		get "/proc/$pid/comm"
		OPENERS+=("$target $pid (${REPLY:-?})")
	done
	exec {fd}<&-
	return 0
}

# REASONS: why controller $1 (nvmeN) must not be taken from the kernel; empty if free.
in_use_reasons() {
	local ctrl=$1 disk p d u o
	local -a paths=("/dev/$ctrl") parts
	REASONS=()
	ctrl_disks "$ctrl"
	for disk in "${DISKS[@]}"; do
		parts=("$disk")
		for p in /sys/class/block/"$disk"/"$disk"p*; do parts+=("${p##*/}"); done
		for d in "${parts[@]}"; do
			uses_of "$d"
			for u in "${USES[@]}"; do REASONS+=("namespace $disk: /dev/$d is $u"); done
			paths+=("/dev/$d")
		done
		paths+=("/dev/ng${disk#nvme}")
	done
	openers_of "${paths[@]}"
	for o in "${OPENERS[@]}"; do
		REASONS+=("${o%% *} is open by process ${o#* }")
	done
	return 0
}

# ---- bind and unbind -----------------------------------------------------------------

# BDFS: the normalized arguments, each checked to be an existing NVMe controller.
# Reports every bad one, then exits; nothing has been touched at that point.
check_bdfs() {
	local arg bad=0
	BDFS=()
	[ $# -gt 0 ] || { err "no BDF given"; usage 2; }
	for arg in "$@"; do
		norm_bdf "$arg"
		if [ -z "$REPLY" ]; then
			err "'$arg' is not a PCI address (DDDD:BB:DD.F)"
			bad=1
		elif [ ! -e "$PCI/devices/$REPLY" ]; then
			err "$REPLY: no such PCI device"
			bad=1
		else
			local b=$REPLY
			get "$PCI/devices/$b/class"
			if [ "$REPLY" != "$NVME_CLASS" ]; then
				err "$b: not an NVMe controller (PCI class $REPLY, not $NVME_CLASS); not touching it"
				bad=1
			else
				BDFS+=("$b")
			fi
		fi
	done
	[ $bad -eq 0 ] || die "nothing was changed"
}

# Wait up to $1 seconds for command $2... to succeed.
wait_for() {
	local tries=$(($1 * 10))
	shift
	until "$@"; do
		tries=$((tries - 1))
		[ $tries -gt 0 ] || return 1
		sleep 0.1
	done
}

driver_is() {
	driver_of "$1"
	[ "$REPLY" = "$2" ]
}

cmd_bind() {
	need_root bind
	check_bdfs "$@"
	local b ctrl r refused=0
	load_mount_tables
	# Refuse first, act after: nothing is touched unless every controller is free.
	for b in "${BDFS[@]}"; do
		iommu_group_of "$b"
		if [ -z "$REPLY" ]; then
			err "refusing to bind $b: it has no IOMMU group; vfio-pci needs the IOMMU" \
				"(boot with intel_iommu=on or amd_iommu=on)"
			refused=1
		fi
		driver_is "$b" nvme || continue
		ctrl_of "$b"
		ctrl=$REPLY
		[ -n "$ctrl" ] || continue
		in_use_reasons "$ctrl"
		for r in "${REASONS[@]}"; do
			err "refusing to bind $b ($ctrl): $r"
			refused=1
		done
	done
	[ $refused -eq 0 ] || die "nothing was changed"

	maybe_hugepages
	[ -d "$PCI/drivers/vfio-pci" ] || modprobe vfio-pci || die "cannot load vfio-pci"
	for b in "${BDFS[@]}"; do bind_one "$b"; done
}

bind_one() {
	local b=$1 was group other
	driver_of "$b"
	was=$REPLY
	iommu_group_of "$b"
	group=$REPLY
	if [ "$was" != vfio-pci ]; then
		echo vfio-pci > "$PCI/devices/$b/driver_override"
		[ "$was" = none ] || echo "$b" > "$PCI/devices/$b/driver/unbind"
		echo "$b" > "$PCI/drivers_probe" 2>/dev/null || true
		if ! wait_for 10 driver_is "$b" vfio-pci; then
			# Give it back rather than leave it without a driver.
			echo > "$PCI/devices/$b/driver_override"
			echo "$b" > "$PCI/drivers_probe" 2>/dev/null || true
			driver_of "$b"
			die "$b: vfio-pci did not take it (driver now: $REPLY); see dmesg"
		fi
	fi
	wait_for 5 test -c "/dev/vfio/$group" ||
		die "$b: bound to vfio-pci but /dev/vfio/$group did not appear"
	say "$b: bound to vfio-pci (was $was), IOMMU group $group, /dev/vfio/$group"
	for other in /sys/kernel/iommu_groups/"$group"/devices/*; do
		other=${other##*/}
		[ "$other" != "$b" ] || continue
		driver_of "$other"
		case $REPLY in
		vfio-pci | pci-stub | pcieport | none) ;;
		*) err "warning: IOMMU group $group also holds $other (driver $REPLY); VFIO cannot" \
			"use the group until that is unbound too (not touched: not named here)" ;;
		esac
	done
}

cmd_unbind() {
	need_root unbind
	check_bdfs "$@"
	local b o refused=0
	for b in "${BDFS[@]}"; do
		driver_is "$b" vfio-pci || continue
		iommu_group_of "$b"
		[ -n "$REPLY" ] || continue
		openers_of "/dev/vfio/$REPLY"
		for o in "${OPENERS[@]}"; do
			err "refusing to unbind $b: ${o%% *} is open by process ${o#* }"
			refused=1
		done
	done
	[ $refused -eq 0 ] || die "nothing was changed"

	maybe_hugepages
	[ -d "$PCI/drivers/nvme" ] || modprobe nvme || die "cannot load nvme"
	for b in "${BDFS[@]}"; do unbind_one "$b"; done
}

ctrl_live() {
	ctrl_of "$1"
	[ -n "$REPLY" ] || return 1
	get "/sys/class/nvme/$REPLY/state"
	[ "$REPLY" = live ]
}

has_disks() {
	ctrl_of "$1"
	ctrl_disks "$REPLY"
	[ ${#DISKS[@]} -gt 0 ]
}

unbind_one() {
	local b=$1 was ctrl
	driver_of "$b"
	was=$REPLY
	# An empty write clears driver_override, so the device matches nvme again.
	echo > "$PCI/devices/$b/driver_override"
	if [ "$was" != nvme ]; then
		[ "$was" = none ] || echo "$b" > "$PCI/devices/$b/driver/unbind"
		echo "$b" > "$PCI/drivers_probe" 2>/dev/null || true
	fi
	if ! wait_for 10 driver_is "$b" nvme; then
		driver_of "$b"
		die "$b: nvme did not take it (driver now: $REPLY); see dmesg"
	fi
	wait_for 60 ctrl_live "$b" || die "$b: bound to nvme but the controller did not become live"
	wait_for 10 has_disks "$b" || true # namespaces are scanned after the controller is live
	ctrl_of "$b"
	ctrl=$REPLY
	ctrl_disks "$ctrl"
	say "$b: bound to nvme (was $was) as $ctrl, namespaces: ${DISKS[*]:-none}"
}

# ---- status --------------------------------------------------------------------------

cmd_status() {
	local dev b vendor device drv group ctrl model disk d u ns found=0
	load_mount_tables
	printf '%-12s  %-9s  %-28s  %-8s  %-5s  %s\n' BDF VID:DID MODEL DRIVER GROUP NAMESPACES
	for dev in "$PCI"/devices/*; do
		get "$dev/class"
		[ "$REPLY" = "$NVME_CLASS" ] || continue
		found=1
		b=${dev##*/}
		get "$dev/vendor"
		vendor=${REPLY#0x}
		get "$dev/device"
		device=${REPLY#0x}
		driver_of "$b"
		drv=$REPLY
		iommu_group_of "$b"
		group=${REPLY:--}
		ctrl_of "$b"
		ctrl=$REPLY
		model=
		ns=-
		if [ -n "$ctrl" ]; then
			get "/sys/class/nvme/$ctrl/model"
			model="$REPLY"
			ns="$ctrl:"
			ctrl_disks "$ctrl"
			for disk in "${DISKS[@]}"; do
				get "/sys/class/block/$disk/queue/logical_block_size"
				ns+=" $disk (${REPLY} B"
				for d in "$disk" /sys/class/block/"$disk"/"$disk"p*; do
					d=${d##*/}
					uses_of "$d"
					for u in "${USES[@]}"; do ns+=", /dev/$d $u"; done
				done
				ns+=")"
			done
		elif command -v lspci > /dev/null; then
			model=$(lspci -s "$b" -mm 2>/dev/null || true)
			model=${model#*\"*\"*\"*\"*\"} # 3rd quoted field: the device name
			model=${model%%\"*}
		fi
		printf '%-12s  %-9s  %-28.28s  %-8s  %-5s  %s\n' "$b" "$vendor:$device" "${model:--}" \
			"$drv" "$group" "$ns"
	done
	[ $found -eq 1 ] || say "no NVMe controllers (PCI class $NVME_CLASS)"
	if [ -d "$HUGEPAGES" ]; then
		local total free
		get "$HUGEPAGES/nr_hugepages"
		total=$REPLY
		get "$HUGEPAGES/free_hugepages"
		free=$REPLY
		say "hugepages (2 MiB): $total reserved, $free free"
	fi
}

# ---- hugepages -----------------------------------------------------------------------

reserve_hugepages() {
	local mib=$1 want got
	[[ $mib =~ ^[0-9]+$ ]] || die "HUGEMEM must be a number of MiB, not '$mib'"
	need_root "reserving hugepages"
	[ -d "$HUGEPAGES" ] || die "no 2 MiB hugepage support ($HUGEPAGES missing)"
	want=$(((mib + 1) / 2))
	echo "$want" > "$HUGEPAGES/nr_hugepages"
	get "$HUGEPAGES/nr_hugepages"
	got=$REPLY
	say "hugepages: asked for $want x 2 MiB ($mib MiB), reserved $got ($((got * 2)) MiB)"
	if [ "$got" -lt "$want" ]; then
		err "warning: only $got of $want hugepages could be reserved (memory short or fragmented)"
	fi
}

maybe_hugepages() {
	if [ -n "${HUGEMEM:-}" ]; then reserve_hugepages "$HUGEMEM"; fi
}

# ---- main ----------------------------------------------------------------------------

main() {
	local cmd=${1:-}
	[ $# -eq 0 ] || shift
	case $cmd in
	-h | --help | help) usage 0 ;;
	status)
		maybe_hugepages
		cmd_status
		;;
	bind) cmd_bind "$@" ;;
	unbind) cmd_unbind "$@" ;;
	"")
		[ -n "${HUGEMEM:-}" ] || usage 2
		maybe_hugepages
		;;
	*)
		err "unknown command '$cmd'"
		usage 2
		;;
	esac
}

main "$@"
