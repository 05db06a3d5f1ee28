#!/usr/bin/env python3
"""Regenerates the sample CSVs used by `munja demo` (deterministic: same output every time).

customers.csv: 10,200 rows, phone numbers in every format Korean exports use, a name and grade
for the template, a night_consent column, ~1% invalid rows and ~1% duplicate numbers.
optouts.csv: 600 opt-outs (수신거부), 520 of them customers, plus a few invalid rows.
"""
import random

rng = random.Random(20261125)
family = "김이박최정강조윤장임한오서신권황안송류홍"
given = ["민수", "서연", "지훈", "하은", "도윤", "수아", "예준", "지우", "시우", "서윤", "주원", "하린"]
grades = ["VIP", "GOLD", "SILVER"]


def fmt(n: str) -> str:
    a, b, c = n[:3], n[3:7], n[7:]
    return rng.choice([
        f"{a}-{b}-{c}", n, f"{a} {b} {c}", f"+82 {a[1:]}-{b}-{c}", f"+82{n[1:]}", f"82-{a[1:]}-{b}-{c}",
    ])


numbers = [f"010{i:08d}" for i in rng.sample(range(10_000_000, 99_999_999), 10_000)]
rows = []
for n in numbers:
    rows.append((fmt(n), rng.choice(family) + rng.choice(given), rng.choice(grades),
                 rng.choice(["Y", "N", "N", "N"])))
for n in rng.sample(numbers, 100):  # the same customer exported twice, in another format
    rows.append((fmt(n), "중복고객", "SILVER", "N"))
bad = ["02-123-4567", "070-1234-5678", "1588-1234", "010-12", "abc", "", "080-600-5653", "010-1234-56789"]
for i in range(100):
    rows.append((bad[i % len(bad)], "잘못된번호", "SILVER", "N"))
rng.shuffle(rows)
with open("customers.csv", "w", encoding="utf-8", newline="") as f:
    f.write("phone,name,grade,night_consent\n")
    for r in rows:
        f.write(",".join(r) + "\n")

opt = rng.sample(numbers, 520) + [f"010{i:08d}" for i in rng.sample(range(10_000_000, 99_999_999), 80)]
with open("optouts.csv", "w", encoding="utf-8", newline="") as f:
    f.write("phone,requested_at,channel\n")
    for i, n in enumerate(opt):
        f.write(f"{fmt(n)},2026-11-{1 + i % 24:02d},080-ARS\n")
    f.write("not-a-number,2026-11-02,web\n02-555-1234,2026-11-03,web\n")
