"""Networks: Table 3's encoders, decoder and MH network f of the MVQ paper (torch only)."""

from mvq.nets.table3 import (
    SUPPORTED,
    Decoder,
    MHNetwork,
    PrimaryEncoder,
    ResidualBlock,
    ResidualStack,
    SameConv2d,
    SecondaryEncoder,
    center_tap,
    down_plan,
    primary_grid,
    table3_kernels,
    up_plan,
)

__all__ = [
    "SUPPORTED",
    "Decoder",
    "MHNetwork",
    "PrimaryEncoder",
    "ResidualBlock",
    "ResidualStack",
    "SameConv2d",
    "SecondaryEncoder",
    "center_tap",
    "down_plan",
    "primary_grid",
    "table3_kernels",
    "up_plan",
]
