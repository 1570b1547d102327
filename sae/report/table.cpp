// Markdown and CSV tables (see table.h).
#include "sae/report/table.h"

#include <cmath>
#include <cstdio>

#include "io/atomic_file.h"

namespace sae {

std::string format_number(double value, int significant) {
  if (std::isnan(value)) return "";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*g", significant, value);
  return buffer;
}

std::string markdown(const Table& table) {
  std::string out = "|";
  for (const std::string& h : table.header) out += " " + h + " |";
  out += "\n|";
  for (size_t i = 0; i < table.header.size(); ++i) out += " --- |";
  out += "\n";
  for (const auto& row : table.rows) {
    out += "|";
    for (const std::string& cell : row) out += " " + cell + " |";
    out += "\n";
  }
  return out;
}

std::string markdown_paragraphs(const std::string& lines) {
  std::string out;
  for (char c : lines) out += c == '\n' ? std::string("\n\n") : std::string(1, c);
  return out;
}

void write_csv(const Table& table, const std::string& path) {
  auto quoted = [](const std::string& cell) {
    if (cell.find_first_of(",\"\n") == std::string::npos) return cell;
    std::string q = "\"";
    for (char c : cell) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  std::string out;
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i) out += ',';
      out += quoted(cells[i]);
    }
    out += "\n";
  };
  line(table.header);
  for (const auto& row : table.rows) line(row);
  write_file_atomic(path, out);
}

}  // namespace sae
