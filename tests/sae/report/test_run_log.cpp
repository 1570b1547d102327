// sae/report/run_log.h: the durations sae_train and the study drivers print, at every scale (short
// runs keep two digits instead of reading "0.0s"), and metrics.csv's rows.
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
  // Past 2^31 s an int overflowed: a study's plan said "at most -596523h-14m".
  EXPECT_EQ(format_duration(3e9), "833333h20m");
  EXPECT_EQ(format_duration(1e18), "2.78e+14h");
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

TEST(RunLog, CountsAreWrittenInFullAndValuesToNineDigits) {
  // tokens passed 10^9 at step 244141 of a 4096-token run: "%.9g" wrote 1.23456793e+09.
  sae::testing::TempDir dir("run_log_counts");
  {
    RunLog log(dir.str(""), 0);
    log.write({{"step", 301415.0}, {"tokens", 1234567891.0}, {"loss", 0.123456789123}, {"fvu", 1e-12},
               {"big", 9007199254740993.0}, {"neg", -0.0}, {"nan", std::numeric_limits<double>::quiet_NaN()}});
  }
  std::ifstream in(dir.str("metrics.csv"), std::ios::binary);
  std::stringstream got;
  got << in.rdbuf();
  EXPECT_EQ(got.str(), "step,tokens,loss,fvu,big,neg,nan\n301415,1234567891,0.123456789,1e-12,9.00719925e+15,-0,nan\n");
}
