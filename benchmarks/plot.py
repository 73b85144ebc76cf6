"""A small log-log line plot written with Pillow (a dependency already), so the report needs
no matplotlib."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
WIDTH, HEIGHT = 900, 600
LEFT, RIGHT, TOP, BOTTOM = 90, 190, 50, 70  # margins: axis labels left/bottom, legend right


def _decades(low, high):
    """Powers of ten covering [low, high] (at least two)."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    return list(range(first, max(last, first + 1) + 1))


def _tick_label(exponent):
    value = 10.0**exponent
    return f"{value:g}" if -3 <= exponent <= 5 else f"1e{exponent}"


def log_log_lines(series: dict[str, list[tuple[float, float]]], path, title: str, x_label: str, y_label: str):
    """series: name -> [(x, y), ...], x and y > 0. Writes a PNG to path."""
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    y_exps = _decades(min(ys), max(ys))
    # x axis: the measured B values themselves (they are powers of two), on a log scale
    x_low, x_high = math.log10(min(xs)) - 0.1, math.log10(max(xs)) + 0.1
    y_low, y_high = y_exps[0], y_exps[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def to_pixel(x, y):
        px = LEFT + (math.log10(x) - x_low) / (x_high - x_low) * plot_w
        py = TOP + plot_h - (math.log10(y) - y_low) / (y_high - y_low) * plot_h
        return px, py

    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.rectangle([LEFT, TOP, LEFT + plot_w, TOP + plot_h], outline="black")
    for exponent in y_exps:  # horizontal grid lines and labels, one per decade
        _, py = to_pixel(10**x_low, 10.0**exponent)
        draw.line([LEFT, py, LEFT + plot_w, py], fill="#dddddd")
        draw.text((LEFT - 8, py), _tick_label(exponent), fill="black", font=font, anchor="rm")
    for x in sorted(set(xs)):
        px, _ = to_pixel(x, 10.0**y_low)
        draw.line([px, TOP, px, TOP + plot_h], fill="#eeeeee")
        draw.text((px, TOP + plot_h + 8), f"{x:g}", fill="black", font=font, anchor="mt")
    draw.text((LEFT + plot_w / 2, 20), title, fill="black", font=font, anchor="mm")
    draw.text((LEFT + plot_w / 2, HEIGHT - 25), x_label, fill="black", font=font, anchor="mm")
    draw.text((10, TOP - 20), y_label, fill="black", font=font, anchor="lm")
    for index, (name, points) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        pixels = [to_pixel(x, y) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colour)
        legend_y = TOP + 10 + 20 * index
        draw.line([LEFT + plot_w + 15, legend_y, LEFT + plot_w + 40, legend_y], fill=colour, width=3)
        draw.text((LEFT + plot_w + 48, legend_y), name, fill="black", font=font, anchor="lm")
    image.save(path, format="PNG")
