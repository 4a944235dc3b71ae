#!/usr/bin/env bash
# Hand NVMe controllers to vfio-pci for ironvme's userspace driver, give them back to the
# kernel nvme driver, reserve hugepages, and show where every NVMe controller stands. It
# takes the verbs and variables of SPDK's scripts/setup.sh; unlike SPDK's, it binds only
# the controllers you name, and it refuses (changing nothing) where SPDK's skips a
# controller that is in use. Used on real hosts and inside the QEMU test guest.
#
#   scripts/setup.sh [config] [BDF...]  bind the named controllers to vfio-pci (the default
#                                       verb). Named: the arguments and PCI_ALLOWED; with
#                                       neither, config refuses (exit status 2)
#   scripts/setup.sh reset [BDF...]     give controllers back to the kernel nvme driver: the
#                                       named ones, else every NVMe controller on vfio-pci
#   scripts/setup.sh status             hugepages per NUMA node, then a line per NVMe
#                                       controller: Type, BDF, Vendor, Device, NUMA, Driver,
#                                       Device, Block devices (headers and notes on stderr)
#   scripts/setup.sh cleanup            free the hugepages, remove the memlock limits this
#                                       script wrote, clear stale vfio-pci driver_overrides
#   scripts/setup.sh bind BDF...        config for exactly these controllers (older name)
#   scripts/setup.sh unbind BDF...      reset for exactly these controllers (older name)
#   scripts/setup.sh help
#
# Environment, with SPDK's names and meanings:
#   PCI_ALLOWED   whitespace-separated PCI addresses (DDDD:BB:DD.F) to bind (config) or to
#                 give back (reset); "none" names no device: config then only reserves
#                 hugepages
#   PCI_BLOCKED   addresses never touched, even when named; it wins over PCI_ALLOWED
#   HUGEMEM       MB of 2 MiB hugepages to reserve (rounded up to whole pages)
#   NRHUGE        number of 2 MiB hugepages to reserve; overrides HUGEMEM
#   HUGENODE      NUMA nodes to reserve on, comma-separated: "0,1" reserves NRHUGE on each,
#                 "nodes_hp[0]=512,nodes_hp[1]=256,2" 512 on node 0, 256 on node 1 and
#                 NRHUGE on node 2 (NRHUGE defaults to SPDK's HUGEMEM of 2048 MB here)
#   SHRINK_HUGE   yes: lower a reservation larger than asked (else it is kept as it is)
#   CLEAR_HUGE    yes: free every 2 MiB hugepage first
#   SKIP_HUGE     yes: leave hugepages alone
#   TARGET_USER   the non-root user who will run ironvme (default: $SUDO_USER). config
#                 gives it the bound controllers' /dev/vfio/N and writes its memlock
#                 limit to /etc/security/limits.d/ironvme-USER.conf (read at its next
#                 login). Never done for root
#   MEMLOCK       that limit, in MB or "unlimited"; default: the hugepage memory asked for,
#                 else SPDK's HUGEMEM default of 2048 MB; at least 64 MB
#
# Unlike SPDK's, config reserves hugepages only when HUGEMEM, NRHUGE or HUGENODE is set
# (ironvme maps anonymous 2 MiB pages when some are free and pinned 4 KiB pages when not,
# so it needs no reservation and no hugetlbfs mount).
#
# Only the controllers named are ever bound, through driver_override (never new_id, which
# would grab every device with the same vendor:device). Before touching anything, config
# refuses an address that does not exist or is not an NVMe controller, a controller
# without an IOMMU group, and a controller any of whose namespaces (or their partitions)
# is mounted, used as swap, held by another block device (device mapper, md, ...) or open
# by a process; reset refuses a controller whose VFIO group is open.
#
# Exit status: 0 done, 1 refused or failed (the message says which device and why),
# 2 usage error, including config with no device named.

set -euo pipefail
shopt -s nullglob

PROG=setup.sh
PCI=/sys/bus/pci
NVME_CLASS=0x010802
HUGEPAGES=/sys/kernel/mm/hugepages/hugepages-2048kB
NODES=/sys/devices/system/node
LIMITS_DIR=/etc/security/limits.d
LIMITS_MARK="# Written by ironvme's scripts/setup.sh"
SPDK_HUGEMEM=2048 # MB: SPDK's default HUGEMEM, the memory its users expect to lock
MIN_MEMLOCK=64    # MB: below this SPDK's setup.sh warns that VFIO may not initialize

# Helpers return their result in REPLY (or an array named in the comment) instead of
# printing it: command substitution forks, and a fork costs tens of milliseconds in the
# TCG test guest. The checks and status are bash builtins apart from one find for open
# files and id for TARGET_USER.

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
usage_error() {
	err "$*"
	err "(scripts/setup.sh help explains the verbs and variables)"
	exit 2
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

is_nvme() {
	get "$PCI/devices/$1/class"
	[ "$REPLY" = "$NVME_CLASS" ]
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

# Kernel NVMe names, read by the rules of ironvme's one classifier of NVMe device nodes
# (drivers/kernel/src/node.rs, NvmeName): this script stays bash, as SPDK's does, so it
# has these twins of the two rules it needs; the test
# node::tests::setup_sh_reads_names_as_nvme_name_does runs both on the same names.
# Numbers are decimal without leading zeros, as the kernel writes them.
NVME_NUM='(0|[1-9][0-9]*)'

# The namespace disk an entry of a controller's sysfs directory (/sys/class/nvme/nvmeX/)
# stands for, in REPLY: a disk nvmeXnY itself; under native multipath a path nvmeScXnY,
# its disk nvmeSnY; empty for every other entry (ngXnY, hwmon2, ...). The twin of
# node::controller_entry_disk.
ctrl_entry_disk() {
	REPLY=
	if [[ $1 =~ ^nvme${NVME_NUM}n${NVME_NUM}$ ]]; then
		REPLY=$1
	elif [[ $1 =~ ^nvme${NVME_NUM}c${NVME_NUM}n${NVME_NUM}$ ]]; then
		REPLY=nvme${BASH_REMATCH[1]}n${BASH_REMATCH[3]}
	fi
	return 0
}

# The generic node (ngXnY) of the namespace named $1 (its disk nvmeXnY, a partition
# nvmeXnYpZ, a multipath path nvmeScXnY of disk nvmeSnY, or ngXnY itself), in REPLY;
# empty for anything else (a controller nvmeX). The twin of NvmeName::generic.
nvme_generic_of() {
	REPLY=
	if [[ $1 =~ ^(nvme|ng)${NVME_NUM}n${NVME_NUM}$ ]] ||
		[[ $1 =~ ^(nvme)${NVME_NUM}n${NVME_NUM}p${NVME_NUM}$ ]]; then
		REPLY=ng${BASH_REMATCH[2]}n${BASH_REMATCH[3]}
	elif [[ $1 =~ ^nvme${NVME_NUM}c${NVME_NUM}n${NVME_NUM}$ ]]; then
		REPLY=ng${BASH_REMATCH[1]}n${BASH_REMATCH[3]}
	fi
	return 0
}

# DISKS: namespace block devices of controller nvmeN: the disks its sysfs entries stand
# for (ctrl_entry_disk) that exist, each once.
ctrl_disks() {
	local p
	local -A seen=()
	DISKS=()
	[ -n "$1" ] || return 0
	for p in /sys/class/nvme/"$1"/nvme*; do
		ctrl_entry_disk "${p##*/}"
		if [ -n "$REPLY" ] && [ -z "${seen[$REPLY]:-}" ] && [ -e "/sys/class/block/$REPLY" ]; then
			seen[$REPLY]=1
			DISKS+=("$REPLY")
		fi
	done
	return 0
}

# ---- which devices: arguments, PCI_ALLOWED, PCI_BLOCKED -------------------------------

# BLOCKED: the normalized PCI_BLOCKED addresses, as keys. A malformed entry is a usage
# error: a typo there must not let a device through.
declare -A BLOCKED=()
load_blocked() {
	local a
	local -a list
	read -r -a list <<< "${PCI_BLOCKED:-}"
	for a in "${list[@]}"; do
		norm_bdf "$a"
		[ -n "$REPLY" ] || usage_error "PCI_BLOCKED: '$a' is not a PCI address (DDDD:BB:DD.F)"
		BLOCKED[$REPLY]=1
	done
}

# NAMES: the arguments and the words of PCI_ALLOWED ("none" names nothing).
named() {
	local a
	local -a list
	NAMES=("$@")
	read -r -a list <<< "${PCI_ALLOWED:-}"
	for a in "${list[@]}"; do
		[ "$a" = none ] || NAMES+=("$a")
	done
}

# BDFS: the named addresses, normalized and each checked to be an existing NVMe controller,
# without duplicates and without those in PCI_BLOCKED (SPDK's "Skipping denied controller").
# Reports every bad one, then exits; nothing has been touched at that point.
check_bdfs() {
	local arg b bad=0
	local -A seen=()
	BDFS=()
	for arg in "$@"; do
		norm_bdf "$arg"
		b=$REPLY
		if [ -z "$b" ]; then
			err "'$arg' is not a PCI address (DDDD:BB:DD.F)"
			bad=1
		elif [ ! -e "$PCI/devices/$b" ]; then
			err "$b: no such PCI device"
			bad=1
		elif ! is_nvme "$b"; then
			err "$b: not an NVMe controller (PCI class $REPLY, not $NVME_CLASS); not touching it"
			bad=1
		elif [ -z "${seen[$b]:-}" ]; then
			seen[$b]=1
			if [ -n "${BLOCKED[$b]:-}" ]; then
				say "$b: skipping it, it is in PCI_BLOCKED"
			else
				BDFS+=("$b")
			fi
		fi
	done
	[ $bad -eq 0 ] || die "nothing was changed"
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
		nvme_generic_of "$disk"
		paths+=("/dev/$REPLY")
	done
	openers_of "${paths[@]}"
	for o in "${OPENERS[@]}"; do
		REASONS+=("${o%% *} is open by process ${o#* }")
	done
	return 0
}

# ---- TARGET_USER and its memlock limit -------------------------------------------------

# Decides TARGET_USER (SPDK's: as given, else $SUDO_USER) and checks it before anything is
# touched. Left empty for root, who needs neither the node nor the limit.
load_target_user() {
	TARGET_USER=${TARGET_USER:-${SUDO_USER:-}}
	[ -n "$TARGET_USER" ] || return 0
	local uid
	uid=$(id -u -- "$TARGET_USER" 2>/dev/null) ||
		usage_error "TARGET_USER: no such user '$TARGET_USER'"
	# limits.conf wants a name, not a uid.
	TARGET_USER=$(id -un -- "$TARGET_USER")
	if [ "$uid" -eq 0 ]; then
		TARGET_USER=
		return 0
	fi
	MEMLOCK=${MEMLOCK:-}
	if [ -z "$MEMLOCK" ]; then
		hugepages_asked
		MEMLOCK=$((REPLY * 2))
		[ "$MEMLOCK" -ge "$MIN_MEMLOCK" ] || MEMLOCK=$MIN_MEMLOCK
	elif [ "$MEMLOCK" != unlimited ]; then
		[[ $MEMLOCK =~ ^[0-9]+$ ]] || usage_error "MEMLOCK must be a number of MB or 'unlimited', not '$MEMLOCK'"
		[ "$MEMLOCK" -ge "$MIN_MEMLOCK" ] ||
			err "warning: MEMLOCK=$MEMLOCK MB is below $MIN_MEMLOCK MB; VFIO may fail to map ironvme's memory"
	fi
}

# Writes TARGET_USER's memlock limit (limits.conf counts in KB) where pam_limits reads it.
write_memlock_limit() {
	local file=$LIMITS_DIR/ironvme-$TARGET_USER.conf value=unlimited shown=unlimited
	if [ "$MEMLOCK" != unlimited ]; then
		value=$((MEMLOCK * 1024))
		shown="$MEMLOCK MB"
	fi
	if ! {
		mkdir -p "$LIMITS_DIR" &&
			printf '%s (config, TARGET_USER=%s): VFIO counts the\n# DMA memory it pins against RLIMIT_MEMLOCK. scripts/setup.sh cleanup removes this file.\n%s soft memlock %s\n%s hard memlock %s\n' \
				"$LIMITS_MARK" "$TARGET_USER" "$TARGET_USER" "$value" "$TARGET_USER" "$value" > "$file.tmp" &&
			mv -f "$file.tmp" "$file"
	}; then
		die "cannot write $file"
	fi
	say "memlock limit of $TARGET_USER: $shown from its next login ($file)"
}

# ---- config (bind) and reset (unbind) ------------------------------------------------

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

# config with the controllers in $@ (already named: arguments and PCI_ALLOWED).
cmd_config() {
	need_root config
	load_blocked
	check_bdfs "$@"
	check_hugepage_vars
	load_target_user
	local b ctrl r refused=0 failed=0
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

	if [ ${#BDFS[@]} -gt 0 ]; then
		[ -d "$PCI/drivers/vfio-pci" ] || modprobe vfio-pci || die "cannot load vfio-pci"
		for b in "${BDFS[@]}"; do bind_one "$b"; done
		[ -z "$TARGET_USER" ] || write_memlock_limit
	fi
	configure_hugepages || failed=1
	return $failed
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
		# As SPDK's does: the override has done its work; cleared, it cannot hand the
		# device to vfio-pci again on a later probe nobody asked for.
		echo > "$PCI/devices/$b/driver_override"
	fi
	wait_for 5 test -c "/dev/vfio/$group" ||
		die "$b: bound to vfio-pci but /dev/vfio/$group did not appear"
	if [ -n "$TARGET_USER" ]; then
		chown -- "$TARGET_USER" "/dev/vfio/$group" || die "$b: cannot chown /dev/vfio/$group to $TARGET_USER"
	fi
	say "$b: bound to vfio-pci (was $was), IOMMU group $group, /dev/vfio/$group${TARGET_USER:+ owned by $TARGET_USER}"
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

# reset: the controllers in $@ if any are named, else every NVMe controller on vfio-pci
# (SPDK's reset takes every one not on nvme; a controller on another driver, pci-stub or
# uio_pci_generic, may be someone else's and is given back only when named), PCI_BLOCKED
# left out either way.
cmd_reset() {
	need_root reset
	load_blocked
	if [ $# -gt 0 ]; then
		check_bdfs "$@"
	else
		local dev b
		BDFS=()
		for dev in "$PCI"/devices/*; do
			b=${dev##*/}
			is_nvme "$b" && driver_is "$b" vfio-pci && [ -z "${BLOCKED[$b]:-}" ] && BDFS+=("$b")
		done
		[ ${#BDFS[@]} -gt 0 ] || say "no NVMe controller is on vfio-pci"
	fi
	local b o refused=0
	for b in "${BDFS[@]}"; do
		driver_is "$b" vfio-pci || continue
		iommu_group_of "$b"
		[ -n "$REPLY" ] || continue
		openers_of "/dev/vfio/$REPLY"
		for o in "${OPENERS[@]}"; do
			err "refusing to give back $b: ${o%% *} is open by process ${o#* }"
			refused=1
		done
	done
	[ $refused -eq 0 ] || die "nothing was changed"

	[ ${#BDFS[@]} -eq 0 ] || [ -d "$PCI/drivers/nvme" ] || modprobe nvme || die "cannot load nvme"
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

# Hugepages per NUMA node and size, as SPDK's status prints them (the header on stderr);
# NUMA_NODES: how many node/size pairs there were (0: no NUMA information).
status_hugepages() {
	local path node size free total
	echo Hugepages
	printf '%-6s %10s %8s / %6s\n' node hugesize free total >&2
	NUMA_NODES=0
	for path in "$NODES"/node*/hugepages/hugepages-*; do
		NUMA_NODES=$((NUMA_NODES + 1))
		[[ $path =~ (node[0-9]+)/hugepages/hugepages-([0-9]+kB) ]] || continue
		node=${BASH_REMATCH[1]}
		size=${BASH_REMATCH[2]}
		get "$path/free_hugepages"
		free=$REPLY
		get "$path/nr_hugepages"
		total=$REPLY
		printf '%-6s %10s %8s / %6s\n' "$node" "$size" "$free" "$total"
	done
	[ $NUMA_NODES -eq 0 ] || return 0
	for path in /sys/kernel/mm/hugepages/hugepages-*; do
		get "$path/free_hugepages"
		free=$REPLY
		get "$path/nr_hugepages"
		total=$REPLY
		printf '%-6s %10s %8s / %6s\n' - "${path##*hugepages-}" "$free" "$total"
	done
}

# SPDK's table: Type, BDF, Vendor, Device, NUMA, Driver, Device (the kernel's controller
# name), Block devices. Data rows on stdout, the header and the notes on what is in use on
# stderr, so `setup.sh status 2>/dev/null` gives rows alone, as SPDK's does.
cmd_status() {
	local dev b vendor device node drv name disk d u found=0
	local -a notes=()
	load_mount_tables
	status_hugepages
	printf '\n%-25s %-15s %-6s %-6s %-7s %-16s %-10s %s\n' \
		Type BDF Vendor Device NUMA Driver Device "Block devices" >&2
	for dev in "$PCI"/devices/*; do
		b=${dev##*/}
		is_nvme "$b" || continue
		found=1
		get "$dev/vendor"
		vendor=${REPLY#0x}
		get "$dev/device"
		device=${REPLY#0x}
		node=-
		if [ "$NUMA_NODES" -gt 0 ]; then
			get "$dev/numa_node"
			node=${REPLY:--1}
			[ "$node" != -1 ] || node=unknown
		fi
		driver_of "$b"
		drv=$REPLY
		[ "$drv" != none ] || drv=-
		name=-
		DISKS=()
		if [ "$drv" = nvme ]; then
			ctrl_of "$b"
			name=${REPLY:--}
			ctrl_disks "$REPLY"
		fi
		printf '%-25s %-15s %-6s %-6s %-7s %-16s %-10s %s\n' \
			NVMe "$b" "$vendor" "$device" "$node" "$drv" "$name" "${DISKS[*]:--}"
		for disk in "${DISKS[@]}"; do
			for d in "$disk" /sys/class/block/"$disk"/"$disk"p*; do
				d=${d##*/}
				uses_of "$d"
				for u in "${USES[@]}"; do notes+=("$b: /dev/$d is $u"); done
			done
		done
	done
	[ $found -eq 1 ] || err "no NVMe controllers (PCI class $NVME_CLASS)"
	if [ ${#notes[@]} -gt 0 ]; then
		echo >&2
		printf '%s\n' "${notes[@]}" >&2
	fi
}

# ---- hugepages -----------------------------------------------------------------------

# Checks the hugepage variables before anything is touched; WANT_HUGE: whether config
# reserves hugepages at all (only when asked, unlike SPDK's).
check_hugepage_vars() {
	local v
	WANT_HUGE=
	HUGENODE_LIST=()
	IFS=, read -r -a HUGENODE_LIST <<< "${HUGENODE:-}"
	for v in NRHUGE HUGEMEM; do
		if [ -n "${!v:-}" ] && ! [[ ${!v} =~ ^[0-9]+$ ]]; then
			usage_error "$v must be a whole number, not '${!v}'"
		fi
	done
	for v in "${HUGENODE_LIST[@]}"; do
		[[ $v =~ ^([0-9]+|nodes_hp\[[0-9]+\]=[0-9]+)$ ]] ||
			usage_error "HUGENODE: '$v' is neither a node number nor nodes_hp[N]=PAGES"
	done
	[ "${SKIP_HUGE:-}" != yes ] || return 0
	if [ -n "${NRHUGE:-}${HUGEMEM:-}${HUGENODE:-}" ] || [ "${CLEAR_HUGE:-}" = yes ]; then
		WANT_HUGE=1
	fi
}

# REPLY: how many 2 MiB pages the variables ask for in all (SPDK's default HUGEMEM if
# they ask for none), for sizing the memlock limit.
hugepages_asked() {
	local v nr=${NRHUGE:-$(((${HUGEMEM:-$SPDK_HUGEMEM} + 1) / 2))} total=0
	REPLY=$nr
	[ ${#HUGENODE_LIST[@]} -gt 0 ] || return 0
	for v in "${HUGENODE_LIST[@]}"; do
		if [[ $v =~ =([0-9]+)$ ]]; then
			total=$((total + BASH_REMATCH[1]))
		else
			total=$((total + nr))
		fi
	done
	REPLY=$total
}

# SPDK's check_hugepages_alloc: reserve NRHUGE pages through nr_hugepages file $1 (of
# node $2, if given), keeping a larger reservation unless SHRINK_HUGE=yes.
reserve_hugepages() {
	local file=$1 where=${2:+ on node $2} have got
	get "$file"
	have=${REPLY:-0}
	if [ "$NRHUGE" -le "$have" ] && [ "${SHRINK_HUGE:-}" != yes ]; then
		say "hugepages: asked for $NRHUGE x 2 MiB$where, $have already reserved; kept" \
			"(SHRINK_HUGE=yes lowers it)"
		return 0
	fi
	echo "$NRHUGE" > "$file"
	get "$file"
	got=${REPLY:-0}
	say "hugepages: asked for $NRHUGE x 2 MiB$where, reserved $got ($((got * 2)) MiB)"
	if [ "$got" -lt "$NRHUGE" ]; then
		err "only $got of $NRHUGE hugepages could be reserved$where (memory short or" \
			"fragmented: drop caches, compact memory or reboot)"
		return 1
	fi
}

# Frees every 2 MiB hugepage not in use (SPDK's clear_hugepages).
clear_hugepages() {
	local left
	echo 0 > "$HUGEPAGES/nr_hugepages"
	get "$HUGEPAGES/nr_hugepages"
	left=${REPLY:-0}
	if [ "$left" -eq 0 ]; then
		say "hugepages: freed every 2 MiB hugepage"
	else
		say "hugepages: freed the free 2 MiB hugepages; $left stay, in use"
	fi
}

# SPDK's configure_linux_hugepages for 2 MiB pages, without the hugetlbfs mount (ironvme
# maps anonymous hugepages).
configure_hugepages() {
	[ -n "$WANT_HUGE" ] || return 0
	[ -d "$HUGEPAGES" ] || die "no 2 MiB hugepage support ($HUGEPAGES missing)"
	[ "${CLEAR_HUGE:-}" != yes ] || clear_hugepages
	[ -n "${NRHUGE:-}${HUGEMEM:-}${HUGENODE:-}" ] || return 0
	NRHUGE=${NRHUGE:-$(((${HUGEMEM:-$SPDK_HUGEMEM} + 1) / 2))}
	local -a nodes=() nodes_hp=()
	local d n failed=0
	for d in "$NODES"/node*/hugepages/hugepages-2048kB; do
		n=${d#"$NODES"/node}
		nodes[${n%%/*}]=$d/nr_hugepages
	done
	if [ -z "${HUGENODE:-}" ] || [ ${#nodes[@]} -eq 0 ]; then
		[ -z "${HUGENODE:-}" ] || err "no NUMA nodes; HUGENODE ignored, reserving on the system as a whole"
		reserve_hugepages "$HUGEPAGES/nr_hugepages" || failed=1
		return $failed
	fi
	for d in "${HUGENODE_LIST[@]}"; do
		if [[ $d =~ ^nodes_hp\[([0-9]+)\]=([0-9]+)$ ]]; then
			nodes_hp[BASH_REMATCH[1]]=${BASH_REMATCH[2]}
		else
			nodes_hp[d]=$NRHUGE
		fi
	done
	for n in "${!nodes_hp[@]}"; do
		if [ -z "${nodes[n]:-}" ]; then
			err "node $n does not exist; ignoring it"
			continue
		fi
		NRHUGE=${nodes_hp[n]} reserve_hugepages "${nodes[n]}" "$n" || failed=1
	done
	return $failed
}

# ---- cleanup -------------------------------------------------------------------------

# SPDK's cleanup removes the files its applications leave behind and frees the
# hugepages (and the sysctl file its setup.sh persisted them in). ironvme leaves no files:
# no hugetlbfs files, runtime directory or lock files. What this script leaves is freed
# here: hugepages, the memlock limits it wrote, and vfio-pci driver_overrides on NVMe
# controllers that are not on vfio-pci (an interrupted bind, or this script before it
# cleared them), which would hand the controller to vfio-pci on a later probe nobody asked
# for. Bindings are left as they are: that is reset's work.
cmd_cleanup() {
	need_root cleanup
	load_blocked
	local f line dev b
	echo Cleaning
	for f in "$LIMITS_DIR"/ironvme-*.conf; do
		get "$f"
		line=$REPLY
		[[ $line == "$LIMITS_MARK"* ]] || continue
		echo "Removing:    $f"
		rm -f -- "$f"
	done
	for dev in "$PCI"/devices/*; do
		b=${dev##*/}
		is_nvme "$b" || continue
		[ -z "${BLOCKED[$b]:-}" ] || continue
		get "$dev/driver_override"
		[ "$REPLY" = vfio-pci ] || continue
		echo > "$dev/driver_override"
		echo "Cleared:     $b driver_override (vfio-pci)"
	done
	if [ "${SKIP_HUGE:-}" != yes ] && [ -d "$HUGEPAGES" ]; then clear_hugepages; fi
	echo Clean
}

# ---- main ----------------------------------------------------------------------------

main() {
	local cmd=config
	case ${1:-} in
	'' | [0-9a-fA-F]*:*) ;; # no verb: config, with any addresses as arguments
	*)
		cmd=$1
		shift
		;;
	esac
	case $cmd in
	-h | --help | help) usage 0 ;;
	config)
		named "$@"
		if [ ${#NAMES[@]} -eq 0 ] && [ "${PCI_ALLOWED:-}" != none ]; then
			usage_error "config: no device named. ironvme binds only the controllers you name:" \
				"give their PCI addresses as arguments or in PCI_ALLOWED" \
				"(PCI_ALLOWED=\"0000:01:00.0 0000:02:00.0\"), or PCI_ALLOWED=none to only reserve hugepages"
		fi
		cmd_config "${NAMES[@]}"
		;;
	bind)
		[ $# -gt 0 ] || usage_error "bind: no device named; give the PCI addresses to bind"
		cmd_config "$@"
		;;
	reset)
		named "$@"
		if [ "${PCI_ALLOWED:-}" = none ] && [ $# -eq 0 ]; then
			say "PCI_ALLOWED=none: no device to give back"
			return 0
		fi
		cmd_reset "${NAMES[@]}"
		;;
	unbind)
		[ $# -gt 0 ] || usage_error "unbind: no device named; give the PCI addresses to give back"
		cmd_reset "$@"
		;;
	status)
		[ $# -eq 0 ] || usage_error "status takes no arguments"
		cmd_status
		;;
	cleanup)
		[ $# -eq 0 ] || usage_error "cleanup takes no arguments"
		cmd_cleanup
		;;
	*) usage_error "unknown verb '$cmd' (config, reset, status, cleanup, bind, unbind, help)" ;;
	esac
}

# Sourced (by the test of the name rules' twins): define the functions only.
[[ ${BASH_SOURCE[0]} != "$0" ]] || main "$@"
