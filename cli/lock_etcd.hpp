// `holdfast lock` and `holder` on etcd (--backend etcd://...): see lock_etcd.cpp and docs/ETCD.md.
#pragma once

#include <chrono>
#include <string>

#include "holdfast/etcd.hpp"

namespace holdfast::cli {

struct LockInvocation;

// The etcd-only flags of `lock` and `holder`.
struct EtcdFlags {
  std::chrono::nanoseconds ttl{0};  // --ttl (0: etcd backend default, 10 s)
  std::string cacert, cert, key;    // --cacert, --cert, --key
  std::string user;                 // --user NAME[:PASSWORD] (else $HOLDFAST_ETCD_PASSWORD)
};

// The cluster and prefix of `url`, with the flags applied. Throws Error(usage) for a bad URL.
EtcdOptions etcd_options_of(const std::string& url, const EtcdFlags& flags);

// Runs `lock` with an etcd backend (inv.backend is an etcd:// URL; inv.path is the lock's name).
int lock_etcd(const LockInvocation& inv, const std::string& prog);

}  // namespace holdfast::cli
