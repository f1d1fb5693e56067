"""ESP32 board: the HAL on the real meter (NVS, machine pins)."""
