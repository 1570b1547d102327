// read_csv_numbers (see csv.h).
#include "io/csv.h"

#include <cstdlib>
#include <sstream>

#include "io/mapped_file.h"
#include "tensor/error.h"

namespace sae {

CsvNumbers read_csv_numbers(const std::string& path) {
  std::stringstream in(read_small_file(path, size_t(1) << 30));
  CsvNumbers table;
  table.path = path;
  std::string line, cell;
  if (!std::getline(in, line) || line.empty()) throw DataError(cat(path, ": empty (no header row)"));
  std::stringstream header(line);
  while (std::getline(header, cell, ',')) table.columns.push_back(cell);
  int64_t line_number = 1;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) continue;
    std::vector<double> row;
    std::stringstream cells(line);
    while (std::getline(cells, cell, ',')) {
      char* end = nullptr;
      const double value = std::strtod(cell.c_str(), &end);
      if (cell.empty() || *end != '\0') throw DataError(cat(path, ":", line_number, ": not a number: '", cell, "'"));
      row.push_back(value);
    }
    if (row.size() != table.columns.size())
      throw DataError(cat(path, ":", line_number, ": ", row.size(), " values for ", table.columns.size(), " columns"));
    table.rows.push_back(std::move(row));
  }
  return table;
}

std::vector<double> CsvNumbers::column(const std::string& name) const {
  for (size_t c = 0; c < columns.size(); ++c)
    if (columns[c] == name) {
      std::vector<double> values;
      for (const auto& row : rows) values.push_back(row[c]);
      return values;
    }
  throw DataError(cat(path, ": no column '", name, "'"));
}

}  // namespace sae
