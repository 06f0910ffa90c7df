from kernels.kd import KDFunction, KDLoss, KDOutput, kd_loss, kd_reference  # noqa: F401
