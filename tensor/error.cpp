// error_text (see error.h): kept out of the header, which every file includes, with <filesystem>.
#include "tensor/error.h"

#include <filesystem>

namespace sae {

std::string error_text(const std::exception& e) {
  const auto* fs_error = dynamic_cast<const std::filesystem::filesystem_error*>(&e);
  if (fs_error == nullptr) return e.what();
  std::string what = fs_error->what();
  const std::string prefix = "filesystem error: ";
  if (what.rfind(prefix, 0) == 0) what = what.substr(prefix.size());
  const size_t paths = what.find(" [");
  if (paths != std::string::npos) what = what.substr(0, paths);
  std::string where = fs_error->path1().string();
  if (!fs_error->path2().empty()) where += " -> " + fs_error->path2().string();
  // A path near PATH_MAX is cut, never the reason after it.
  return where.empty() ? printable(what, 1000) : printable(where, 700) + ": " + printable(what, 300);
}

}  // namespace sae
