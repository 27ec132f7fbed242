"""The sidebar tab (3D viewport → N panel → GTR): views, scene renders, options, Reconstruct, progress."""

from __future__ import annotations

import os

import bpy

from . import jobs


class GTR_UL_views(bpy.types.UIList):
    """One row per view: camera, image file name, mask marker."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=item.camera.name if item.camera else "(no camera)", icon="CAMERA_DATA")
        name = os.path.basename(bpy.path.abspath(item.image)) if item.image else "no image"
        row.label(text=name, icon="IMAGE_DATA" if item.image else "ERROR")
        if item.mask:
            row.label(text="", icon="MOD_MASK")
        if item.frame >= 0:
            row.label(text=f"f{item.frame}")


class _Panel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "GTR"


class GTR_PT_main(_Panel, bpy.types.Panel):
    bl_label = "GTR Reconstruct"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.gtr
        layout.template_list("GTR_UL_views", "", settings, "views", settings, "active_view", rows=4)
        row = layout.row(align=True)
        row.operator("gtr.add_selected_cameras", icon="ADD")
        row.operator("gtr.remove_view", text="", icon="REMOVE")
        row.operator("gtr.clear_views", text="", icon="TRASH")
        layout.prop(settings, "image_folder")
        if settings.views and 0 <= settings.active_view < len(settings.views):
            view = settings.views[settings.active_view]
            box = layout.box()
            box.prop(view, "camera")
            box.prop(view, "image")
            box.prop(view, "mask")
            box.prop(view, "frame")
        layout.prop(settings, "bounds")

        busy = jobs.busy()
        column = layout.column()
        column.scale_y = 1.4
        if busy:
            column.operator("gtr.cancel", icon="CANCEL")
        else:
            column.operator("gtr.reconstruct", icon="MESH_MONKEY")
        if busy:
            eta = f", about {settings.eta:.0f} s left" if settings.eta >= 0 else ""
            layout.progress(factor=settings.progress, type="BAR", text=f"{settings.stage}{eta}")
        elif settings.status:
            for n, line in enumerate(settings.status.splitlines()[:6]):
                icon = ("ERROR" if settings.status_is_error else "CHECKMARK") if n == 0 else "BLANK1"
                layout.label(text=line, icon=icon)


class GTR_PT_scene_views(_Panel, bpy.types.Panel):
    bl_label = "Views From the Scene"
    bl_parent_id = "GTR_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        settings = context.scene.gtr
        row = layout.row(align=True)
        row.prop(settings, "ring_count")
        row.prop(settings, "render_size")
        row = layout.row(align=True)
        row.prop(settings, "render_samples")
        row.prop(settings, "render_source", text="")
        layout.operator("gtr.ring_cameras", icon="CON_CAMERASOLVER")
        layout.operator("gtr.render_views", icon="RENDER_STILL")
        layout.operator("gtr.reconstruct_selected", icon="SHADERFX")


class GTR_PT_options(_Panel, bpy.types.Panel):
    bl_label = "Options"
    bl_parent_id = "GTR_PT_main"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        settings = context.scene.gtr
        layout.prop(settings, "method")
        if settings.method != "FIT":
            layout.prop(settings, "checkpoint")
        layout.prop(settings, "preset")
        layout.prop(settings, "texture")
        if settings.texture == "uv":
            layout.prop(settings, "texture_size")
        layout.prop(settings, "face_budget")
        layout.prop(settings, "device")
        layout.prop(settings, "work_folder")
        layout.prop(settings, "extra_options")
        layout.operator("gtr.release_backend", icon="X")


classes = (GTR_UL_views, GTR_PT_main, GTR_PT_scene_views, GTR_PT_options)
