#include "sys/fs_kind.hpp"

#include <sys/vfs.h>

#include <cerrno>
#include <cstdint>

namespace holdfast::sys {

int on_network_filesystem(int fd) noexcept {
  struct statfs st {};
  if (::fstatfs(fd, &st) != 0) return -errno;
  // Values of linux/magic.h and the filesystems' own headers (not all of them are in magic.h).
  switch (static_cast<uint32_t>(st.f_type)) {
    case 0x6969U:      // NFS
    case 0x517BU:      // SMB
    case 0xFF534D42U:  // CIFS
    case 0xFE534D42U:  // SMB2
    case 0x01021997U:  // 9p (v9fs)
    case 0x65735546U:  // FUSE
    case 0x00C36400U:  // Ceph
    case 0x5346414FU:  // AFS (kAFS)
    case 0x6B414653U:  // AFS (OpenAFS)
    case 0x73757245U:  // Coda
    case 0x0BD00BD0U:  // Lustre
    case 0x7461636FU:  // OCFS2
    case 0x01161970U:  // GFS2
      return 1;
    default:
      return 0;
  }
}

}  // namespace holdfast::sys
