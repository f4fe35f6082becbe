"""cpu_vec.h's 16-lane exponential against its 8-lane one, bit for bit, over float inputs of every kind.

`exp_u10_512` reaches Sleef's result (`exp_u10`, ATen's exponential) by other operations (vscalefps for the power of
two), so the AVX-512 kernels that use it must still give the AVX2 kernels' bits: this compiles a small program on
the header and compares both on float bit patterns spread over the whole range (normal, subnormal, the ends at -104
and 100, infinities, NaNs). Run once with every one of the 2^32 patterns (session 45): no difference.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from geosam.models.cpu_build import compiler
from geosam.models.device import cpu_flags

HEADER = Path(__file__).resolve().parents[1] / "geosam" / "models" / "cpu_vec.h"

PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "cpu_vec.h"

static __attribute__((target("avx512f,fma"))) int64_t differ(const float* x, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i + 16 <= n; i += 16) {
    float a[16], b[16];
    _mm256_storeu_ps(a, exp_u10(_mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(a + 8, exp_u10(_mm256_loadu_ps(x + i + 8)));
    _mm512_storeu_ps(b, exp_u10_512(_mm512_loadu_ps(x + i)));
    for (int j = 0; j < 16; j++) bad += memcmp(a + j, b + j, 4) != 0;
  }
  return bad;
}

int main(int argc, char** argv) {
  static float buf[1 << 16];
  const uint64_t step = (uint64_t)atoll(argv[1]);
  int64_t n = 0, bad = 0, total = 0;
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += step) {
    const uint32_t w = (uint32_t)u;
    memcpy(buf + n++, &w, 4);
    if (n == (1 << 16)) { bad += differ(buf, n); total += n; n = 0; }
  }
  float ends[32] = {INFINITY, -INFINITY, NAN, -NAN, 0.f, -0.f, -104.f, -103.99f, -104.01f, 100.f, 100.01f, 88.7f,
                    88.8f, -87.3f, -87.4f, -1e30f, 1e30f, -150.f, -126.f, 1e-40f, -1e-40f, 0.5f, -0.5f, 1.f,
                    -1.f, 2.f, -2.f, 10.f, -10.f, -50.f, 50.f, -88.f};
  bad += differ(ends, 32);
  printf("%lld %lld\n", (long long)(total + 32), (long long)bad);
  return 0;
}
"""


@pytest.mark.skipif("avx512f" not in cpu_flags() or compiler() is None, reason="no AVX-512 (or no C compiler) here")
def test_exp_u10_512_gives_exp_u10s_bits_everywhere(tmp_path: Path) -> None:
    src = tmp_path / "exp_bits.c"
    src.write_text(PROGRAM)
    exe = tmp_path / "exp_bits"
    cc = compiler()
    assert cc is not None
    subprocess.run([cc, "-O2", "-mavx2", "-mfma", "-ffp-contract=off", "-I", str(HEADER.parent), str(src), "-o", str(exe), "-lm"],
                   check=True, capture_output=True)  # fmt: skip
    out = subprocess.run([str(exe), "257"], check=True, capture_output=True, text=True).stdout.split()
    total, bad = int(out[0]), int(out[1])
    assert total > 16_000_000  # every 257th bit pattern: all exponents, both signs, NaN payloads
    assert bad == 0
