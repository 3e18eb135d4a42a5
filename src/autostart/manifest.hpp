// The autostart manifest: the record of exactly what one install created, which uninstall
// consumes. One JSON file per NAME in the scope's manifest directory (MANIFEST_DIR/NAME.json).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "autostart/autostart.hpp"

namespace holdfast::autostart {

// One thing install created (logical path). Directories are listed parents first.
struct Entry {
  enum class Kind { dir, file, symlink };
  Kind kind = Kind::file;
  std::string path;
  mode_t mode = 0;       // dir, file
  std::string digest;    // file: "sha256:HEX" of the content written
  std::string target;    // symlink
  // Not recorded: the content to write (file), and whether the entry already exists (a directory
  // another install created and still uses; see shared below).
  std::string content;
  bool present = false;
};

struct Manifest {
  std::string name;
  Scope scope = Scope::system;
  Method method = Method::systemd;
  std::string unit;                // systemd: the unit name
  std::vector<Entry> created;      // in creation order
  // User crontab (cron method, user scope): the block install appended.
  bool crontab = false;
  bool crontab_existed = false;    // the user had a crontab before install
  bool crontab_added_newline = false;  // install terminated its last line with '\n'
  std::string crontab_digest;      // sha256 of the block (marker line + @reboot line)
  bool linger_enabled = false;     // install ran `loginctl enable-linger` (or shares it)

  std::string to_json() const;
  // Throws Error(data) naming `path` if `text` is not a manifest.
  static Manifest parse(const std::string& text, const std::string& path);
  // Whether two manifests describe the same install (method, files, links, crontab block);
  // directories are not compared: which ones install had to create depends on the tree.
  bool same_install(const Manifest& other) const;
};

// "sha256:HEX" of `content`.
std::string content_digest(const std::string& content);

}  // namespace holdfast::autostart
