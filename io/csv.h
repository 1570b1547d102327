// Reader of numeric CSV files as our programs write them (metrics.csv): a header row of column
// names, then rows of numbers, comma-separated, no quoting. DataError naming the file and line for
// a missing file, an empty one, a cell that is not a number, or a row of the wrong length.
#pragma once
#include <string>
#include <vector>

namespace sae {

struct CsvNumbers {
  std::string path;
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;
  std::vector<double> column(const std::string& name) const;  // DataError naming the file when absent
};

CsvNumbers read_csv_numbers(const std::string& path);

}  // namespace sae
