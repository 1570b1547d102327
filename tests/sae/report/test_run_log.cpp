// format_duration (sae/report/run_log.h): the durations sae_train and the study drivers print, at
// every scale (short runs keep two digits instead of reading "0.0s").
#include <gtest/gtest.h>

#include <limits>

#include "sae/report/run_log.h"

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
