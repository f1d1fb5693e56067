"""Unix-port board: the HAL on a PC (files stand in for flash), for tests and the simulator."""
