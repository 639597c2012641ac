#!/usr/bin/env python3
"""Draws Flyt's app icon (icon.png, 512x512 RGBA) with nothing but the standard library.

A rounded square in Flyt's indigo with a white speech bubble and a swift "F" stroke cut out of
it. Run it again after changing it: `python3 app/src-tauri/icons/draw.py`.
"""
import math
import struct
import zlib
from pathlib import Path

N = 512
SS = 4  # supersampling per axis, for smooth edges


def rounded_rect(x, y, x0, y0, x1, y1, r):
    cx = min(max(x, x0 + r), x1 - r)
    cy = min(max(y, y0 + r), y1 - r)
    return (x - cx) ** 2 + (y - cy) ** 2 <= r * r and x0 <= x <= x1 and y0 <= y <= y1


def bubble(x, y):
    # The bubble: a rounded rectangle with a tail at its lower left.
    body = rounded_rect(x, y, 120, 132, 392, 342, 64)
    tail = x >= 150 and y >= 320 and (x - 150) / 90 + (y - 320) / 85 <= 1  # a triangle
    return body or tail


def letter(x, y):
    # An "F" in the bubble: one stem and two bars, slanted a little for speed.
    sx = x + (y - 236) * 0.18
    stem = 204 <= sx <= 244 and 172 <= y <= 302
    top = 204 <= sx <= 320 and 172 <= y <= 208
    mid = 204 <= sx <= 296 and 222 <= y <= 256
    return stem or top or mid


def pixel(px, py):
    acc = [0.0, 0.0, 0.0, 0.0]
    for sy in range(SS):
        for sx in range(SS):
            x = px + (sx + 0.5) / SS
            y = py + (sy + 0.5) / SS
            if not rounded_rect(x, y, 16, 16, N - 16, N - 16, 112):
                continue
            if bubble(x, y) and not letter(x, y):
                c = (255, 255, 255)
            else:
                t = (x + y) / (2 * N)  # diagonal gradient, indigo to violet
                c = (int(79 + (124 - 79) * t), int(70 + (58 - 70) * t), int(229 + (237 - 229) * t))
            acc[0] += c[0]
            acc[1] += c[1]
            acc[2] += c[2]
            acc[3] += 255
    n = SS * SS
    a = acc[3] / n
    if a == 0:
        return (0, 0, 0, 0)
    cov = acc[3] / 255
    return (round(acc[0] / cov), round(acc[1] / cov), round(acc[2] / cov), round(a))


def png(width, height, rows):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(v for p in row for v in p) for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


if __name__ == "__main__":
    rows = [[pixel(x, y) for x in range(N)] for y in range(N)]
    out = Path(__file__).with_name("icon.png")
    out.write_bytes(png(N, N, rows))
    print(f"wrote {out}")
