// sys/fs_kind: what kind of filesystem a descriptor lives on, from statfs(2) f_type only.
#pragma once

namespace holdfast::sys {

// 1 if the file open at `fd` is on a network or userspace filesystem (NFS, SMB/CIFS, 9p, FUSE,
// Ceph, AFS, Coda, GlusterFS-over-FUSE, Lustre, OCFS2, GFS2), where another machine may share the
// file and a write the kernel has not synced may be lost, or not yet seen by other clients,
// without this machine rebooting. 0 if it is a local filesystem. -errno if fstatfs fails.
int on_network_filesystem(int fd) noexcept;

}  // namespace holdfast::sys
