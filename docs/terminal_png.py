"""Render captured terminal text to a PNG that looks like a terminal window (for the README)."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSansMono.ttf"  # ships with matplotlib
BACKGROUND, FOREGROUND, PROMPT, TITLE_BAR = (30, 30, 36), (220, 220, 220), (120, 200, 120), (60, 60, 70)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def clean_lines(text: str, width: int, max_lines: int) -> list[str]:
    """Strip colour codes and carriage-return progress redraws, wrap long lines, keep the last lines."""
    lines = []
    for raw in ANSI.sub("", text).splitlines():
        raw = raw.split("\r")[-1]
        lines += textwrap.wrap(raw, width, break_on_hyphens=False, drop_whitespace=False) or [""]
    if len(lines) > max_lines:
        lines = ["..."] + lines[-(max_lines - 1):]
    return lines


def render_terminal(command: str, output: str, path: Path, *, title: str, width: int = 118,
                    max_lines: int = 40, size: int = 14) -> Path:
    """Draw ``$ command`` followed by ``output`` in a terminal-like frame and save it as PNG."""
    font = ImageFont.truetype(str(FONT), size)
    cmd_lines = textwrap.wrap("$ " + command, width, break_on_hyphens=False)
    lines = clean_lines(output, width, max_lines)
    text_w = int(font.getlength("M" * width)) + 1  # advance widths, not glyph boxes
    line_h = int(size * 1.35)
    bar = line_h + 8
    img = Image.new("RGB", (text_w + 24, bar + line_h * (len(cmd_lines) + len(lines)) + 20), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, img.width, bar], fill=TITLE_BAR)
    for i, colour in enumerate([(255, 95, 86), (255, 189, 46), (39, 201, 63)]):
        draw.ellipse([10 + 20 * i, bar // 2 - 6, 22 + 20 * i, bar // 2 + 6], fill=colour)
    draw.text((80, 4), title, font=font, fill=FOREGROUND)
    y = bar + 8
    for line in cmd_lines:
        draw.text((12, y), line, font=font, fill=PROMPT)
        y += line_h
    for line in lines:
        draw.text((12, y), line, font=font, fill=FOREGROUND)
        y += line_h
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
