"""Print-ready posters read from a bundle: paper geometry, cells at print size, render, PDF."""
