from kernels.kd import KDFunction, KDLoss, KDOutput, kd_loss, kd_reference  # noqa: F401
from kernels.span_kd import (  # noqa: F401
    SpanKDFunction,
    SpanKDLoss,
    SpanKDOptions,
    SpanKDOutput,
    span_kd_loss,
    span_kd_reference,
)
