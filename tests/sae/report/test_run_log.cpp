// format_duration (sae/report/run_log.h): the durations sae_train and the study drivers print, at
// every scale (short runs keep two digits instead of reading "0.0s").
#include <gtest/gtest.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "sae/report/run_log.h"
#include "tests/util/test_util.h"

using namespace sae;

TEST(RunLog, DurationsReadAtEveryScale) {
  EXPECT_EQ(format_duration(0.042), "0.042s");
  EXPECT_EQ(format_duration(0.00031), "0.00031s");
  EXPECT_EQ(format_duration(0.5), "0.5s");
  EXPECT_EQ(format_duration(12.34), "12.3s");
  EXPECT_EQ(format_duration(185), "3m05s");
  EXPECT_EQ(format_duration(3720), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::numeric_limits<double>::quiet_NaN()), "?");
}

TEST(RunLog, AResumeKeepsOnlyWholeRowsUpToItsStep) {
  // A crash or a full disk can cut the last row: without its newline, or short of fields.
  sae::testing::TempDir dir("run_log_rows");
  const std::string csv = dir.str("metrics.csv");
  const std::string header = "step,loss,l0\n", rows = "1,2.5,3\n2,2.25,3\n";
  for (const std::string& cut : {std::string("3,2.1"), std::string("3"), std::string("3,2.1\n"), std::string("9,1,1\n")}) {
    std::ofstream(csv, std::ios::binary) << header << rows << cut;
    { RunLog log(dir.str(""), 5); }
    std::ifstream in(csv, std::ios::binary);
    std::stringstream got;
    got << in.rdbuf();
    EXPECT_EQ(got.str(), header + rows) << "after " << cut;
  }
}
